"""A scripted OpenAI-compatible endpoint's answers: good ones for some captions, every kind of failure
for others (error statuses, HTML bodies, truncated JSON, completions that are not JSON). The animal in
"a red <animal> on the grass" picks the script."""

from __future__ import annotations

import json
import re

ANIMALS = ["dog", "cat", "horse", "bird", "cow", "goat", "sheep", "duck", "fox", "wolf", "bear", "deer"]


def captions(n: int) -> list[dict]:
    return [{"id": f"c{i}", "caption": f"a red {ANIMALS[i]} on the grass"} for i in range(n)]


def good_answer(caption: str, principle: str, color: str = "blue") -> str:
    return json.dumps({"caption": caption.replace("red", color), "principle": principle,
                       "edits": [{"from": "red", "to": color}]})


def fault_for(caption: str) -> str:
    return caption.split()[2]  # "a red <animal> ...": the animal picks the script


FAULTS: dict[str, object] = {
    "cat": (400, "application/json", json.dumps({"error": {"message": "maximum context length is 4096"}}).encode()),
    "horse": (500, "text/html", b"<html><body>Internal Server Error</body></html>"),
    "bird": (503, "text/plain", b"overloaded"),  # retryable: retried, then an error answer
    "cow": (200, "application/json", b"{\"choices\": [ truncated"),  # a body that is not JSON
    "goat": (200, "application/json", b"{}"),
    "sheep": "{not json",  # a completion whose content is not JSON
}


def scripted(body: dict):
    user = body["messages"][1]["content"]
    principle = re.search(r"Principle: (\w+)", user).group(1)
    caption = user.split("True caption: ", 1)[1]
    fault = FAULTS.get(fault_for(caption))
    return good_answer(caption, principle) if fault is None else fault
