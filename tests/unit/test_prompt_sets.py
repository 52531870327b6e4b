"""The packaged benchmark prompt sets load by name with their categories; user files by path."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tpo_ray.config import EvalConfig
from tpo_ray.eval.prompt_sets import PACKAGED, load_prompts


def test_partiprompts_has_its_1632_prompts_in_12_categories_quotes_kept() -> None:
    prompts = load_prompts("parti")
    assert len(prompts) == 1632 and len({p.category for p in prompts}) == 12
    assert prompts[0].text == "bond" and prompts[0].id == "parti-00000"
    assert any(p.text.startswith('"G I G G L E" painted') for p in prompts)  # a leading quote is text, not quoting
    assert all(p.text for p in prompts)


def test_t2i_compbench_has_300_prompts_per_category() -> None:
    prompts = load_prompts("t2i_compbench")
    assert Counter(p.category for p in prompts) == {c: 300 for c in
                                                    ("color", "shape", "texture", "spatial", "non_spatial", "complex")}
    assert prompts[0].text == "a green bench and a blue bowl"


def test_every_packaged_set_is_named_in_the_readme_with_a_licence() -> None:
    from importlib import resources

    folder = resources.files("tpo_ray.eval").joinpath("prompts")
    readme = folder.joinpath("README.md").read_text()
    for name, file in PACKAGED.items():
        assert f"`{name}`" in readme and file in readme
    assert folder.joinpath("LICENSE-parti").read_text().lstrip().startswith("Apache License")
    assert folder.joinpath("LICENSE-t2i-compbench").read_text().startswith("MIT License")
    assert EvalConfig().prompts in PACKAGED


def test_user_files_text_jsonl_and_parquet(tmp_path) -> None:
    text = tmp_path / "mine.txt"
    text.write_text("a red car\n\n  a blue bus  \n")
    assert [p.text for p in load_prompts(str(text))] == ["a red car", "a blue bus"]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"caption": "a cat", "category": "animals"}, {"caption": "a dog"}]))
    got = load_prompts(str(jsonl))
    assert [(p.text, p.category) for p in got] == [("a cat", "animals"), ("a dog", None)]
    parquet = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"prompt": ["x", "y"]}), parquet)
    assert [p.id for p in load_prompts(str(parquet))] == ["mine-00000", "mine-00001"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no prompt column"}))
    with pytest.raises(ValueError, match=r"no prompt column .* it has \['text'\]"):
        load_prompts(str(bad))
    with pytest.raises(FileNotFoundError, match="neither a packaged set"):
        load_prompts("drawbench")
