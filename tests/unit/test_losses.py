"""Every loss against hand-computed values and the invariants of LOSSES.md."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tpo_ray.losses import LOSS_SPECS, LOSSES, LossOutput
from tpo_ray.losses.mapo import mapo_odds

LOG2 = math.log(2.0)


def t(*values: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# ---------------------------------------------------------------- registry and interface
def test_registry_holds_exactly_the_seven_methods() -> None:
    assert set(LOSSES) == {"sft", "dpo", "tdpo", "kto", "tkto", "mapo", "rpo"}
    assert set(LOSS_SPECS) == set(LOSSES)


@pytest.mark.parametrize(
    ("name", "positional", "defaults"),
    [
        ("sft", ["m"], {}),
        ("dpo", ["m_w", "m_l", "r_w", "r_l"], {"beta": 5000.0}),
        ("tdpo", ["m_w", "m_l", "r_w", "r_l"], {"beta": 5000.0, "tau": None}),
        ("kto", ["m", "r", "y"], {"beta": 5000.0, "kl_mode": "batch"}),
        ("tkto", ["m", "r", "y"], {"beta": 5000.0, "tau": None, "kl_mode": "batch", "z0": None}),
        ("mapo", ["m_w", "m_l"], {"beta": 0.1, "gamma": 0.5, "T": 1000}),
        ("rpo", ["m_w", "m_l", "r_w", "r_l", "emb"], {"beta": 5000.0, "temp": 0.5}),
    ],
)
def test_signature_matches_the_interface(name: str, positional: list[str], defaults: dict) -> None:
    params = inspect.signature(LOSSES[name]).parameters
    pos = [p.name for p in params.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert pos == positional
    for key, value in defaults.items():
        assert params[key].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[key].default == value


def _call(name: str, n: int = 4, dtype: torch.dtype = torch.float32, requires_grad: bool = False):
    g = torch.Generator().manual_seed(0)
    spec = LOSS_SPECS[name]

    def rnd() -> torch.Tensor:
        return (0.1 + 0.01 * torch.rand(n, generator=g, dtype=dtype)).requires_grad_(requires_grad)

    if spec.inputs == "single":
        return LOSSES[name](rnd())
    if spec.inputs == "labelled":
        y = torch.tensor([1.0, -1.0] * (n // 2), dtype=dtype)
        return LOSSES[name](rnd(), rnd().detach(), y)
    args = [rnd(), rnd()]
    if spec.needs_reference:
        args += [rnd().detach(), rnd().detach()]
    if spec.needs_embeddings:
        args.append(torch.randn(n, 8, generator=g, dtype=dtype))
    return LOSSES[name](*args)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_returns_a_finite_scalar_and_float_metrics(name: str) -> None:
    out = _call(name, requires_grad=True)
    assert isinstance(out, LossOutput)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.metrics["loss"] == pytest.approx(float(out.loss.detach()))
    assert all(isinstance(v, float) for v in out.metrics.values())
    out.loss.backward()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_half_precision_errors_reduce_in_fp32(name: str) -> None:
    assert _call(name, dtype=torch.bfloat16).loss.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradcheck_float64(name: str) -> None:
    spec = LOSS_SPECS[name]
    g = torch.Generator().manual_seed(1)
    n = 4
    # Scale errors so beta * differences stay O(1): gradcheck then probes the curved region.
    base = [(0.1 + 1e-4 * torch.randn(n, generator=g, dtype=torch.float64)) for _ in range(4)]
    if spec.inputs == "single":
        inputs, fn = (base[0].requires_grad_(),), LOSSES[name]
    elif spec.inputs == "labelled":
        y = t(1, -1, 1, -1)
        inputs = (base[0].requires_grad_(),)
        fn = lambda m: LOSSES[name](m, base[1], y).loss  # noqa: E731
    elif not spec.needs_reference:
        inputs = (base[0].requires_grad_(), base[1].requires_grad_())
        fn = lambda a, b: LOSSES[name](a, b).loss  # noqa: E731
    elif spec.needs_embeddings:
        emb = torch.randn(n, 3, generator=g, dtype=torch.float64)
        inputs = (base[0].requires_grad_(), base[1].requires_grad_())
        fn = lambda a, b: LOSSES[name](a, b, base[2], base[3], emb).loss  # noqa: E731
    else:
        inputs = (base[0].requires_grad_(), base[1].requires_grad_())
        fn = lambda a, b: LOSSES[name](a, b, base[2], base[3]).loss  # noqa: E731
    if spec.inputs == "single":
        assert torch.autograd.gradcheck(lambda m: LOSSES[name](m).loss, inputs)
    else:
        assert torch.autograd.gradcheck(fn, inputs)


# ---------------------------------------------------------------- SFT
def test_sft_is_the_mean_error() -> None:
    assert float(LOSSES["sft"](t(0.1, 0.3)).loss) == pytest.approx(0.2)


# ---------------------------------------------------------------- TDPO / DPO
def test_tdpo_hand_computed() -> None:
    m_w, m_l, r_w, r_l = t(0.10, 0.20), t(0.12, 0.20), t(0.1002, 0.2), t(0.1195, 0.2004)
    out = LOSSES["tdpo"](m_w, m_l, r_w, r_l, beta=5000.0)
    # pair 0: d_w = -2e-4, d_l = 5e-4, margin 7e-4 -> logit 2500 * 7e-4 = 1.75
    # pair 1: d_w = 0, d_l = -4e-4, margin -4e-4 -> logit -1.0
    expected = -(logsigmoid(1.75) + logsigmoid(-1.0)) / 2
    assert float(out.loss) == pytest.approx(expected, rel=1e-9)
    assert out.metrics["implicit_acc"] == pytest.approx(0.5)


def test_tdpo_clip_hand_computed() -> None:
    # d_w = 0, d_l = 1e-3 > tau = 2e-4 -> margin 2e-4 -> logit 0.5
    out = LOSSES["tdpo"](t(0.1), t(0.201), t(0.1), t(0.2), beta=5000.0, tau=2e-4)
    assert float(out.loss) == pytest.approx(-logsigmoid(0.5), rel=1e-9)
    assert out.metrics["clip_frac"] == 1.0


@pytest.mark.parametrize("name", ["tdpo", "dpo"])
def test_policy_equal_reference_gives_log2(name: str) -> None:
    m_w, m_l = t(0.3, 0.1, 0.7), t(0.2, 0.5, 0.1)
    out = LOSSES[name](m_w, m_l, m_w.clone(), m_l.clone())
    assert float(out.loss) == LOG2 or math.isclose(float(out.loss), LOG2, rel_tol=0, abs_tol=1e-15)
    assert out.metrics["implicit_acc"] == 0.5  # every pair is a tie, counted as 0.5


def test_tdpo_tau_zero_with_policy_equal_reference_is_still_log2() -> None:
    m = t(0.2, 0.4)
    assert float(LOSSES["tdpo"](m, m, m, m, tau=0.0).loss) == pytest.approx(LOG2, abs=1e-15)


def test_swapping_w_and_l_flips_the_preference() -> None:
    m_w, m_l, r_w, r_l = t(0.10, 0.11), t(0.15, 0.16), t(0.12, 0.12), t(0.12, 0.12)
    a = LOSSES["tdpo"](m_w, m_l, r_w, r_l)
    b = LOSSES["tdpo"](m_l, m_w, r_l, r_w)
    assert a.metrics["implicit_acc"] == 1.0 and b.metrics["implicit_acc"] == 0.0
    assert float(a.loss) < LOG2 < float(b.loss)


def test_dpo_equals_tdpo_without_clip() -> None:
    g = torch.Generator().manual_seed(3)
    xs = [0.1 + 1e-3 * torch.rand(8, generator=g, dtype=torch.float64) for _ in range(4)]
    assert float(LOSSES["dpo"](*xs).loss) == float(LOSSES["tdpo"](*xs, tau=None).loss)


def test_tdpo_beta_convention_is_halved() -> None:
    # margin 1e-4 at beta 5000 -> logit 0.25 (Diffusion-DPO convention, not 0.5)
    out = LOSSES["tdpo"](t(0.1), t(0.1001), t(0.1), t(0.1), beta=5000.0)
    assert float(out.loss) == pytest.approx(-logsigmoid(0.25), rel=1e-9)


def test_tdpo_no_gradient_through_loser_past_tau() -> None:
    m_w = t(0.1).requires_grad_()
    m_l = t(0.3, ).requires_grad_()
    out = LOSSES["tdpo"](m_w, m_l, t(0.1), t(0.2), tau=1e-3)  # d_l = 0.1 > tau
    out.loss.backward()
    assert m_l.grad is not None and float(m_l.grad) == 0.0
    assert float(m_w.grad) > 0.0  # the winner still learns


def test_tdpo_gradient_through_loser_below_tau() -> None:
    m_l = t(0.2001).requires_grad_()
    LOSSES["tdpo"](t(0.1), m_l, t(0.1), t(0.2), tau=1e-3).loss.backward()
    assert float(m_l.grad) < 0.0  # raising the loser's error lowers the loss


def test_unknown_clip_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown clip"):
        LOSSES["tdpo"](t(0.1), t(0.1), t(0.1), t(0.1), tau=0.1, clip="bogus")


errors = st.floats(min_value=0.0, max_value=2.0, allow_nan=False, width=64)


@settings(max_examples=200, deadline=None)
@given(m_w=errors, m_l=errors, r_w=errors, r_l=errors, delta=st.floats(1e-6, 1.0),
       tau=st.one_of(st.none(), st.floats(0.0, 1.0)), beta=st.floats(1.0, 1e4))
def test_lower_m_w_never_raises_tdpo(m_w, m_l, r_w, r_l, delta, tau, beta) -> None:
    before = LOSSES["tdpo"](t(m_w), t(m_l), t(r_w), t(r_l), beta=beta, tau=tau).loss
    after = LOSSES["tdpo"](t(max(m_w - delta, 0.0)), t(m_l), t(r_w), t(r_l), beta=beta, tau=tau).loss
    assert float(after) <= float(before)


@settings(max_examples=200, deadline=None)
@given(m_w=errors, m_l=errors, r_w=errors, r_l=errors, delta=st.floats(1e-6, 1.0),
       tau=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_higher_m_l_never_raises_tdpo(m_w, m_l, r_w, r_l, delta, tau) -> None:
    before = LOSSES["tdpo"](t(m_w), t(m_l), t(r_w), t(r_l), tau=tau).loss
    after = LOSSES["tdpo"](t(m_w), t(m_l + delta), t(r_w), t(r_l), tau=tau).loss
    assert float(after) <= float(before)


# ---------------------------------------------------------------- TKTO / KTO
@pytest.mark.parametrize("name", ["tkto", "kto"])
@pytest.mark.parametrize("kl_mode", ["batch", "undesirable"])
def test_kto_policy_equal_reference_gives_half(name: str, kl_mode: str) -> None:
    m = t(0.3, 0.1, 0.7, 0.2)
    out = LOSSES[name](m, m.clone(), t(1, -1, 1, -1), kl_mode=kl_mode)
    assert float(out.loss) == 0.5
    assert out.metrics["z0"] == 0.0


def test_tkto_hand_computed_with_batch_reference_point() -> None:
    m, r, y = t(0.1, 0.2), t(0.1003, 0.1996), t(1, -1)
    # g = [3e-4, -4e-4] -> mean -5e-5 -> z0 = clamp(.., min 0) = 0
    # s = [5000 * 3e-4, -1 * 5000 * -4e-4] = [1.5, 2.0]
    expected = ((1 - sigmoid(1.5)) + (1 - sigmoid(2.0))) / 2
    out = LOSSES["tkto"](m, r, y, beta=5000.0)
    assert float(out.loss) == pytest.approx(expected, rel=1e-9)
    assert out.metrics["implicit_acc"] == 1.0 and out.metrics["z0"] == 0.0


def test_tkto_positive_reference_point_is_subtracted() -> None:
    m, r, y = t(0.1, 0.2), t(0.1004, 0.2), t(1, -1)
    # g = [4e-4, 0] -> z0 = 2e-4; s = [5000 * 2e-4, -5000 * -2e-4] = [1.0, 1.0]
    out = LOSSES["tkto"](m, r, y)
    assert out.metrics["z0"] == pytest.approx(2e-4)
    assert float(out.loss) == pytest.approx(1 - sigmoid(1.0), rel=1e-9)


def test_tkto_undesirable_mode_averages_only_losers() -> None:
    m, r, y = t(0.1, 0.2, 0.3), t(0.1004, 0.2002, 0.3), t(1, -1, -1)
    # undesirable g = [2e-4, 0] -> z0 = 1e-4
    assert LOSSES["tkto"](m, r, y, kl_mode="undesirable").metrics["z0"] == pytest.approx(1e-4)


def test_tkto_clip_floors_undesirable_reward_and_stops_its_gradient() -> None:
    m = t(0.1, 0.5).requires_grad_()
    r, y = t(0.1, 0.2), t(1, -1)
    out = LOSSES["tkto"](m, r, y, tau=1e-3, z0=0.0)
    # undesirable g = -min(0.3, 1e-3) = -1e-3 -> s = 5000 * 1e-3 = 5; desirable s = 0
    assert float(out.loss) == pytest.approx(((1 - sigmoid(0.0)) + (1 - sigmoid(5.0))) / 2, rel=1e-9)
    out.loss.backward()
    assert float(m.grad[1]) == 0.0 and float(m.grad[0]) != 0.0
    assert out.metrics["clip_frac"] == 1.0


def test_tkto_external_z0_is_used_and_rolled_requires_it() -> None:
    m, r, y = t(0.1, 0.2), t(0.1, 0.2), t(1, -1)
    out = LOSSES["tkto"](m, r, y, beta=1000.0, z0=1e-3)
    # g = 0, s = [-1, +1]
    assert float(out.loss) == pytest.approx(((1 - sigmoid(-1.0)) + (1 - sigmoid(1.0))) / 2)
    with pytest.raises(ValueError, match="rolled"):
        LOSSES["tkto"](m, r, y, kl_mode="rolled")


def test_kto_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match=r"\+1"):
        LOSSES["kto"](t(0.1), t(0.1), t(0.0))


def test_kto_is_tkto_without_clip() -> None:
    m, r, y = t(0.1, 0.5, 0.2), t(0.1, 0.2, 0.21), t(1, -1, -1)
    assert float(LOSSES["kto"](m, r, y).loss) == float(LOSSES["tkto"](m, r, y, tau=None).loss)


# ---------------------------------------------------------------- MaPO
def test_mapo_odds_hand_values_and_limit() -> None:
    assert float(mapo_odds(t(0.0))) == 1.0
    assert float(mapo_odds(t(2.0))) == pytest.approx(1.0 / math.expm1(1.0), rel=1e-12)
    for x in (1e-12, 1e-9, 1e-6, 1e-3):
        exact = (0.5 * x) / math.expm1(0.5 * x)
        assert float(mapo_odds(t(x))) == pytest.approx(exact, rel=1e-12)


def test_mapo_is_finite_with_gradients_for_tiny_and_zero_errors() -> None:
    m_w = t(0.0, 1e-12, 1e-7).requires_grad_()
    m_l = t(1e-9, 0.0, 1e-5).requires_grad_()
    out = LOSSES["mapo"](m_w, m_l)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(m_w.grad).all() and torch.isfinite(m_l.grad).all()
    # d f / dx at 0 is -gamma / 2 = -0.25: the series branch carries the true derivative.
    x = t(0.0).requires_grad_()
    mapo_odds(x).backward()
    assert float(x.grad) == pytest.approx(-0.25)


def test_mapo_hand_computed() -> None:
    m_w, m_l = t(0.2), t(0.4)
    f = lambda x: 0.5 * x / math.expm1(0.5 * x)  # noqa: E731
    log_odds = f(0.2) - f(0.4)
    expected = 0.2 - 0.1 * logsigmoid(1000 * log_odds)
    out = LOSSES["mapo"](m_w, m_l)
    assert float(out.loss) == pytest.approx(expected, rel=1e-12)
    assert out.metrics["implicit_acc"] == 1.0


# ---------------------------------------------------------------- RPO
def test_rpo_single_pair_is_dpo() -> None:
    xs = [t(0.1), t(0.1003), t(0.1001), t(0.1)]
    emb = torch.randn(1, 5, dtype=torch.float64)
    assert float(LOSSES["rpo"](*xs, emb).loss) == pytest.approx(float(LOSSES["dpo"](*xs).loss), rel=1e-12)


def test_rpo_hand_computed_two_pairs() -> None:
    m_w, m_l, r_w, r_l = t(0.1, 0.2), t(0.1, 0.2), t(0.1002, 0.2), t(0.1, 0.1999)
    emb = t(1.0, 0.0, 0.0, 1.0).reshape(2, 2)  # orthogonal prompts: cos = 0 off the diagonal
    a = [2e-4, 0.0]
    b = [0.0, -1e-4]
    w_same = 1 / (1 + math.exp(-2.0))  # softmax of [0, -1/0.5]
    w_other = 1 - w_same
    total = 0.0
    for i in range(2):
        for j in range(2):
            w = w_same if i == j else w_other
            total += -logsigmoid(2500 * w * (a[i] - b[j]))
    out = LOSSES["rpo"](m_w, m_l, r_w, r_l, emb)
    assert float(out.loss) == pytest.approx(total / 4, rel=1e-9)


def test_rpo_policy_equal_reference_gives_log2_and_checks_shapes() -> None:
    m = t(0.1, 0.2, 0.3)
    emb = torch.randn(3, 4, dtype=torch.float64)
    assert float(LOSSES["rpo"](m, m, m, m, emb).loss) == pytest.approx(LOG2, abs=1e-15)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        LOSSES["rpo"](m, m, m, m, torch.randn(2, 4))
