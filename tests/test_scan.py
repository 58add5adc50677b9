"""Selective scan and causal conv1d: references pinned by hand, fast paths and dispatch checked against them."""

import math

import pytest
import torch
import torch.nn.functional as F

from mobilevideogpt.model import scan, scan_cpu
from mobilevideogpt.model.scan import (
    BACKEND_ENV,
    causal_conv1d,
    causal_conv1d_ref,
    causal_conv1d_torch,
    selective_scan,
    selective_scan_ref,
    selective_scan_torch,
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(batch=2, dim=8, seqlen=37, dstate=4, groups=None, dtype=torch.float32, seed=0):
    """Mamba-like ranges: softplus(delta + bias) ~ 0.01..1, A = -(1..N) scaled per channel."""
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, dstate, seqlen) if groups is None else (batch, groups, dstate, seqlen)
    t = {
        "u": torch.randn(batch, dim, seqlen, generator=g),
        "delta": torch.randn(batch, dim, seqlen, generator=g) - 2.0,
        "A": -torch.arange(1, dstate + 1, dtype=torch.float32).repeat(dim, 1) * torch.rand(dim, 1, generator=g) * 2,
        "B": torch.randn(*bc_shape, generator=g),
        "C": torch.randn(*bc_shape, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, seqlen, generator=g),
        "delta_bias": torch.randn(dim, generator=g) * 0.5,
    }
    return {k: v.to(dtype) for k, v in t.items()}


def pick(inputs, use_D=True, use_z=True, use_bias=True, softplus=True):
    """Drop the optional inputs not used; without softplus, keep delta positive as a real model would."""
    kw = dict(inputs)
    if not softplus:
        kw["delta"] = F.softplus(kw["delta"])
        kw["delta_bias"] = kw["delta_bias"].abs() * 0.1
    for name, use in (("D", use_D), ("z", use_z), ("delta_bias", use_bias)):
        if not use:
            kw[name] = None
    return kw


# ---------------------------------------------------------------- reference pinned by hand


def test_reference_matches_hand_computed_example():
    # delta = softplus(1 - 1) = ln 2, so the decays are exp(-ln 2) = 1/2 and exp(-2 ln 2) = 1/4.
    # h_0 = d*[1, 2]           y_0 = d
    # h_1 = d*[1/2, 1/2 + 2]   y_1 = d*(1/2 + 5/2) = 3d
    # h_2 = d*[1/4, 5/8]       y_2 = 5/8 d          (u_2 = 0: no drive)
    d = math.log(2.0)
    u = torch.tensor([[[1.0, 2.0, 0.0]]])
    delta = torch.ones(1, 1, 3)
    A = torch.tensor([[-1.0, -2.0]])
    B = torch.tensor([[[1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]])
    C = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]])
    y, last = selective_scan_ref(u, delta, A, B, C, delta_bias=torch.tensor([-1.0]), delta_softplus=True,
                                 return_last_state=True)
    torch.testing.assert_close(y, torch.tensor([[[d, 3 * d, 0.625 * d]]]))
    torch.testing.assert_close(last, torch.tensor([[[0.25 * d, 0.625 * d]]]))
    # Skip D*u and gate silu(ln 3) = ln 3 * sigmoid(ln 3) = 0.75 ln 3.
    z = torch.full((1, 1, 3), math.log(3.0))
    out = selective_scan_ref(u, delta, A, B, C, D=torch.tensor([0.5]), z=z, delta_bias=torch.tensor([-1.0]),
                             delta_softplus=True)
    expected = (torch.tensor([d, 3 * d, 0.625 * d]) + 0.5 * torch.tensor([1.0, 2.0, 0.0])) * 0.75 * math.log(3.0)
    torch.testing.assert_close(out, expected.view(1, 1, 3))
    for impl in (selective_scan_torch, selective_scan):
        torch.testing.assert_close(impl(u, delta, A, B, C, D=torch.tensor([0.5]), z=z,
                                        delta_bias=torch.tensor([-1.0]), delta_softplus=True), out)


def test_grouped_B_C_means_channel_d_reads_group_d_div_D_over_G():
    x = make_inputs(batch=1, dim=6, seqlen=9, dstate=3, groups=3)
    out = selective_scan_ref(**x, delta_softplus=True)
    per_group = []
    for g in range(3):
        ch = slice(2 * g, 2 * g + 2)
        per_group.append(selective_scan_ref(x["u"][:, ch], x["delta"][:, ch], x["A"][ch], x["B"][:, g], x["C"][:, g],
                                            D=x["D"][ch], z=x["z"][:, ch], delta_bias=x["delta_bias"][ch],
                                            delta_softplus=True))
    torch.testing.assert_close(out, torch.cat(per_group, dim=1))


# ---------------------------------------------------------------- pure-PyTorch fast path vs reference


@pytest.mark.parametrize("use_D,use_z,use_bias,softplus", [
    (True, True, True, True), (False, False, False, False), (True, False, True, False), (False, True, False, True),
])
@pytest.mark.parametrize("groups", [None, 2])
def test_torch_path_forward_matches_reference(monkeypatch, use_D, use_z, use_bias, softplus, groups):
    monkeypatch.setattr(scan, "_BLOCK_CPU", 16)  # 37 steps = 16 + 16 + 5: block carries are exercised
    x = pick(make_inputs(groups=groups), use_D, use_z, use_bias, softplus)
    ref, ref_last = selective_scan_ref(**x, delta_softplus=softplus, return_last_state=True)
    out, last = selective_scan_torch(**x, delta_softplus=softplus, return_last_state=True)
    assert out.dtype == torch.float32 and last.dtype == torch.float32 and last.shape == (2, 8, 4)
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(last, ref_last) <= 1e-5
    assert torch.equal(selective_scan_torch(**x, delta_softplus=softplus), out)


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_torch_path_gradients_match_reference(monkeypatch, groups, dtype, tol):
    monkeypatch.setattr(scan, "_BLOCK_CPU", 8)
    x = {k: v.requires_grad_() for k, v in make_inputs(seqlen=21, groups=groups, dtype=dtype).items()}
    names = list(x)
    gen = torch.Generator().manual_seed(1)
    g_out = torch.randn(2, 8, 21, generator=gen, dtype=dtype)
    g_last = torch.randn(2, 8, 4, generator=gen, dtype=dtype)
    grads = []
    for impl in (selective_scan_ref, selective_scan_torch):
        out, last = impl(**x, delta_softplus=True, return_last_state=True)
        loss = (out * g_out).sum() + (last * g_last).sum()
        grads.append(torch.autograd.grad(loss, [x[n] for n in names]))
    for name, ref, fast in zip(names, *grads):
        assert rel_err(fast, ref) <= tol, name


def test_torch_path_passes_gradcheck(monkeypatch):
    monkeypatch.setattr(scan, "_BLOCK_CPU", 4)
    x = make_inputs(batch=1, dim=4, seqlen=6, dstate=2, groups=2, dtype=torch.float64)
    names = list(x)

    def fn(*tensors):
        return selective_scan_torch(**dict(zip(names, tensors)), delta_softplus=True, return_last_state=True)

    assert torch.autograd.gradcheck(fn, tuple(v.requires_grad_() for v in x.values()))


def test_moderately_large_case_matches_reference():
    x = make_inputs(batch=2, dim=64, seqlen=300, dstate=16)
    ref = selective_scan_ref(**x, delta_softplus=True)
    assert rel_err(selective_scan_torch(**x, delta_softplus=True), ref) <= 1e-5
    with torch.no_grad():
        assert rel_err(selective_scan(**x, delta_softplus=True), ref) <= 1e-5


def test_strong_decay_and_single_step():
    # exp(delta * A) underflows to 0 in many channels; a one-step sequence has no recurrence at all.
    for seqlen in (1, 19):
        x = make_inputs(seqlen=seqlen)
        x["A"] = x["A"] * 400
        ref = selective_scan_ref(**x, delta_softplus=True)
        assert rel_err(selective_scan_torch(**x, delta_softplus=True), ref) <= 1e-5
        with torch.no_grad():
            assert rel_err(selective_scan(**x, delta_softplus=True), ref) <= 1e-5


def test_empty_batch_or_sequence():
    for batch, seqlen in ((0, 5), (2, 0)):
        x = make_inputs(batch=batch, seqlen=seqlen)
        for impl in (selective_scan_ref, selective_scan_torch, scan_cpu.selective_scan_cpu, selective_scan):
            out, last = impl(**x, delta_softplus=True, return_last_state=True)
            assert out.shape == (batch, 8, seqlen) and last.shape == (batch, 8, 4)
            assert not last.any()


def test_float64_inputs_stay_float64_in_auto_mode():
    x = make_inputs(dtype=torch.float64)
    ref = selective_scan_ref(**x, delta_softplus=True)
    with torch.no_grad():
        out = selective_scan(**x, delta_softplus=True)
    assert out.dtype == torch.float64 and rel_err(out, ref) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_half_precision_inputs_keep_dtype_and_fp32_state(monkeypatch, dtype, backend):
    monkeypatch.setenv(BACKEND_ENV, backend)
    x = make_inputs(dtype=dtype)
    ref, ref_last = selective_scan_ref(**{k: v.float() for k, v in x.items()}, delta_softplus=True,
                                       return_last_state=True)
    with torch.no_grad():
        out, last = selective_scan(**x, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    # Same (rounded) inputs, fp32 inside: only the final rounding to half precision differs.
    assert rel_err(out, ref) <= 1e-2
    assert rel_err(last, ref_last) <= 1e-5


def test_invalid_inputs_raise_clear_errors():
    x = make_inputs()
    with pytest.raises(ValueError, match="input-independent"):
        selective_scan(**{**x, "B": x["A"]})
    with pytest.raises(ValueError, match="does not divide"):
        selective_scan(**{**x, "B": x["B"].view(2, 1, 4, 37).expand(2, 3, 4, 37),
                          "C": x["C"].view(2, 1, 4, 37).expand(2, 3, 4, 37)})
    with pytest.raises(ValueError, match="delta must have u's shape"):
        selective_scan(**{**x, "delta": x["delta"][..., :5]})
    with pytest.raises(ValueError, match="complex A"):
        selective_scan(**{**x, "A": x["A"].to(torch.complex64)})
    with pytest.raises(ValueError, match="z must have"):
        selective_scan(**{**x, "z": x["z"][:1]})


# ---------------------------------------------------------------- compiled CPU kernel and backend choice


@pytest.fixture
def kernel():
    """The compiled kernel. It must build wherever a C++ compiler exists (CI has g++): a failure there is a bug."""
    fn = scan_cpu.load_kernel()
    if fn is None:
        if scan_cpu._compiler() is None:
            pytest.skip("no C++ compiler on this machine: the compiled kernel is optional")
        pytest.fail(f"compiled CPU scan failed to build: {scan_cpu.build_error()}")
    return fn


@pytest.mark.parametrize("use_D,use_z,use_bias,softplus", [(True, True, True, True), (False, False, False, False)])
@pytest.mark.parametrize("groups,dim", [(None, 8), (2, 70), (None, 33)])
def test_compiled_kernel_matches_reference(kernel, use_D, use_z, use_bias, softplus, groups, dim):
    # dim = 70 with 2 groups and dim = 33 leave partial channel blocks; 150 steps span three time tiles.
    x = pick(make_inputs(dim=dim, seqlen=150, groups=groups), use_D, use_z, use_bias, softplus)
    ref, ref_last = selective_scan_ref(**x, delta_softplus=softplus, return_last_state=True)
    out, last = scan_cpu.selective_scan_cpu(**x, delta_softplus=softplus, return_last_state=True)
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(last, ref_last) <= 1e-5


def test_strided_inputs_as_the_mamba_mixer_passes_them(kernel):
    # delta, z, B and C come from transposed Linear outputs (channel stride 1); u is a slice along channels.
    x = make_inputs(dim=40, seqlen=70)
    strided = {
        "u": torch.cat([x["u"], x["u"]], dim=1)[:, 40:],
        "delta": x["delta"].transpose(1, 2).contiguous().transpose(1, 2),
        "z": x["z"].transpose(1, 2).contiguous().transpose(1, 2),
        "B": torch.cat([x["B"], x["C"]], dim=1).transpose(1, 2).contiguous().transpose(1, 2)[:, :4],
        "C": torch.cat([x["B"], x["C"]], dim=1).transpose(1, 2).contiguous().transpose(1, 2)[:, 4:],
        "A": x["A"], "D": x["D"], "delta_bias": x["delta_bias"],
    }
    assert strided["delta"].stride(1) == 1 and strided["B"].stride(1) == 1
    ref = selective_scan_ref(**x, delta_softplus=True)
    for impl in (scan_cpu.selective_scan_cpu, selective_scan_torch):
        assert rel_err(impl(**strided, delta_softplus=True), ref) <= 1e-5
    # Fully general strides (every other element) take the generic path.
    spaced = {k: (torch.stack([v, v], dim=-1)[..., 0] if v.dim() == 3 else v) for k, v in x.items()}
    assert spaced["u"].stride() == (2 * 40 * 70, 2 * 70, 2)
    assert rel_err(scan_cpu.selective_scan_cpu(**spaced, delta_softplus=True), ref) <= 1e-5


def test_compiled_softplus_matches_torch_over_a_wide_range(kernel):
    # delta = 0 and A = -1 make the state exp(-softplus(v)) * 0 + softplus(v) * u * B with u = B = 1, C = 1, L = 1:
    # the output is exactly softplus(v) for every channel.
    v = torch.linspace(-60, 40, 4001)
    ones = torch.ones(1, 1, 1)
    out = scan_cpu.selective_scan_cpu(torch.ones(1, 4001, 1), torch.zeros(1, 4001, 1), -torch.ones(4001, 1), ones,
                                      ones, delta_bias=v, delta_softplus=True)
    torch.testing.assert_close(out.view(-1), F.softplus(v), rtol=2e-6, atol=0)


def test_backend_env_var(monkeypatch, kernel):
    x = make_inputs()
    calls = []
    real = scan_cpu.selective_scan_cpu

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scan_cpu, "selective_scan_cpu", spy)
    with torch.no_grad():
        monkeypatch.setenv(BACKEND_ENV, "torch")
        selective_scan(**x, delta_softplus=True)
        assert calls == []
        monkeypatch.setenv(BACKEND_ENV, "auto")
        selective_scan(**x, delta_softplus=True)
        assert calls == [1]
        monkeypatch.setenv(BACKEND_ENV, "cpp")
        selective_scan(**x, delta_softplus=True)
        assert calls == [1, 1]
    # A gradient is needed: auto quietly uses PyTorch, a forced cpp says why it cannot.
    u = x["u"].clone().requires_grad_()
    monkeypatch.setenv(BACKEND_ENV, "auto")
    selective_scan(**{**x, "u": u}, delta_softplus=True).sum().backward()
    assert calls == [1, 1] and u.grad is not None
    monkeypatch.setenv(BACKEND_ENV, "cpp")
    with pytest.raises(RuntimeError, match="forward-only"):
        selective_scan(**{**x, "u": u}, delta_softplus=True)
    with pytest.raises(RuntimeError, match="fp32 only"):
        with torch.no_grad():
            selective_scan(**{k: v.double() for k, v in x.items()})
    monkeypatch.setenv(BACKEND_ENV, "fastest")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        selective_scan(**x, delta_softplus=True)


def test_failed_build_falls_back_to_torch(monkeypatch):
    for name, value in (("_tried", False), ("_kernel", None), ("_error", None), ("_compiler", lambda: None)):
        monkeypatch.setattr(scan_cpu, name, value)
    assert scan_cpu.load_kernel() is None
    assert "no C++ compiler" in scan_cpu.build_error()
    x = make_inputs()
    monkeypatch.setenv(BACKEND_ENV, "auto")
    with torch.no_grad():
        out = selective_scan(**x, delta_softplus=True)
    torch.testing.assert_close(out, selective_scan_ref(**x, delta_softplus=True))
    monkeypatch.setenv(BACKEND_ENV, "cpp")
    with pytest.raises(RuntimeError, match="unavailable"):
        with torch.no_grad():
            selective_scan(**x, delta_softplus=True)


def test_build_goes_to_temp_dir_when_cache_is_unwritable(monkeypatch, tmp_path, kernel):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(blocker / "cache"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    for name, value in (("_tried", False), ("_kernel", None), ("_error", None)):
        monkeypatch.setattr(scan_cpu, name, value)
    assert scan_cpu.load_kernel() is not None, scan_cpu.build_error()
    assert list(tmp_path.glob("mobilevideogpt_scan_cpu_*/scan_cpu.so"))
    x = make_inputs()
    ref = selective_scan_ref(**x, delta_softplus=True)
    assert rel_err(scan_cpu.selective_scan_cpu(**x, delta_softplus=True), ref) <= 1e-5


# ---------------------------------------------------------------- causal conv1d


def conv_inputs(batch=2, dim=6, seqlen=20, width=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(batch, dim, seqlen, generator=g).to(dtype), torch.randn(dim, width, generator=g).to(dtype),
            torch.randn(dim, generator=g).to(dtype))


def test_causal_conv1d_reference_by_hand():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    w = torch.tensor([[10.0, 1.0]])  # out[t] = 10 * x[t-1] + x[t] + bias
    out = causal_conv1d_ref(x, w, torch.tensor([0.5]))
    torch.testing.assert_close(out, torch.tensor([[[1.5, 12.5, 23.5, 34.5]]]))


@pytest.mark.parametrize("width", [1, 2, 4, 7])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_matches_reference_and_padded_conv(width, activation):
    x, w, b = conv_inputs(width=width)
    ref = causal_conv1d_ref(x, w, b, activation=activation)
    padded = F.conv1d(x, w.unsqueeze(1), b, padding=width - 1, groups=x.shape[1])[..., : x.shape[2]]
    if activation:
        padded = F.silu(padded)
    torch.testing.assert_close(ref, padded, rtol=1e-5, atol=1e-6)
    for impl in (causal_conv1d_torch, causal_conv1d):
        torch.testing.assert_close(impl(x, w, b, activation=activation), ref, rtol=1e-5, atol=1e-6)
    # nn.Conv1d's (D, 1, W) weight and no bias are accepted too.
    torch.testing.assert_close(causal_conv1d(x, w.unsqueeze(1), None), causal_conv1d_ref(x, w), rtol=1e-5, atol=1e-6)


def test_causal_conv1d_is_causal_and_differentiable():
    x, w, b = conv_inputs(dtype=torch.float64)
    base = causal_conv1d(x, w, b, activation="silu")
    changed = x.clone()
    changed[..., 12] += 5.0
    out = causal_conv1d(changed, w, b, activation="silu")
    torch.testing.assert_close(out[..., :12], base[..., :12], rtol=0, atol=0)
    assert not torch.allclose(out[..., 12:16], base[..., 12:16])
    torch.testing.assert_close(out[..., 16:], base[..., 16:], rtol=0, atol=0)  # width 4: t = 12..15 see x[12]
    args = tuple(t.clone().requires_grad_() for t in conv_inputs(seqlen=7, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a, activation="silu"), args)


def test_causal_conv1d_half_precision_and_bad_input():
    x, w, b = conv_inputs(dtype=torch.bfloat16)
    out = causal_conv1d(x, w, b, activation="silu")
    assert out.dtype == torch.bfloat16
    ref = causal_conv1d_ref(x.float(), w.float(), b.float(), activation="silu")
    assert rel_err(out, ref) <= 1e-2
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, b, activation="relu")
    with pytest.raises(ValueError, match="weight must be"):
        causal_conv1d(x, w[:3], b)


# ---------------------------------------------------------------- CUDA


def _cuda_or_skip(package: str):
    if scan._cuda_kernel(package) is None:
        pytest.skip(f"{package} is not importable here")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_torch_path_on_cuda_matches_reference(dtype, tol):
    x = make_inputs(dim=16, seqlen=64, dstate=8, groups=2)
    names = list(x)
    ref, ref_last = selective_scan_ref(**{k: v.to(dtype).float() for k, v in x.items()}, delta_softplus=True,
                                       return_last_state=True)
    cuda = {k: v.to("cuda", dtype).requires_grad_() for k, v in x.items()}
    out, last = selective_scan_torch(**cuda, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    assert rel_err(out.cpu(), ref) <= tol and rel_err(last.cpu(), ref_last) <= 1e-5
    if dtype == torch.float32:
        cpu = {k: v.clone().requires_grad_() for k, v in x.items()}
        grads_ref = torch.autograd.grad(selective_scan_ref(**cpu, delta_softplus=True).square().sum(),
                                        [cpu[n] for n in names])
        grads = torch.autograd.grad(out.square().sum(), [cuda[n] for n in names])
        for name, g, r in zip(names, grads, grads_ref):
            assert rel_err(g.cpu(), r) <= 1e-4, name


@pytest.mark.gpu
@requires_cuda
def test_mamba_ssm_dispatch_matches_reference(monkeypatch):
    _cuda_or_skip("mamba_ssm")
    monkeypatch.setenv(BACKEND_ENV, "auto")
    x = make_inputs(dim=16, seqlen=64, dstate=8)
    names = list(x)
    cpu = {k: v.clone().requires_grad_() for k, v in x.items()}
    ref, ref_last = selective_scan_ref(**cpu, delta_softplus=True, return_last_state=True)
    cuda = {k: v.cuda().requires_grad_() for k, v in x.items()}
    out, last = selective_scan(**cuda, delta_softplus=True, return_last_state=True)
    assert rel_err(out.cpu(), ref) <= 1e-4 and rel_err(last.cpu(), ref_last) <= 1e-4
    grads_ref = torch.autograd.grad(ref.square().sum(), [cpu[n] for n in names])
    grads = torch.autograd.grad(out.square().sum(), [cuda[n] for n in names])
    for name, g, r in zip(names, grads, grads_ref):
        assert rel_err(g.cpu(), r) <= 1e-3, name


@pytest.mark.gpu
@requires_cuda
def test_causal_conv1d_dispatch_on_cuda(monkeypatch):
    _cuda_or_skip("causal_conv1d")
    monkeypatch.setenv(BACKEND_ENV, "auto")
    x, w, b = conv_inputs(dim=16, seqlen=64)
    ref = causal_conv1d_ref(x, w, b, activation="silu")
    out = causal_conv1d(x.cuda(), w.cuda(), b.cuda(), activation="silu")
    assert out.dtype == torch.float32
    assert rel_err(out.cpu(), ref) <= 1e-5
