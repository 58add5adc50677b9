"""Selective scan and causal conv1d: references pinned by hand, fast paths and dispatch checked against them."""

import ctypes
import hashlib
import math
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mobilevideogpt.engine import native, scan_cpu
from mobilevideogpt.model import scan
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
    """The compiled kernels. They must build wherever a C++ compiler exists (CI has g++): a failure there is a bug."""
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


def fresh_loader() -> native.LazyKernel:
    """A loader that has not tried yet (the module's own, already loaded, comes back after the test)."""
    return native.LazyKernel(scan_cpu._build, "test: selective scan unavailable")


def test_failed_build_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(scan_cpu, "_compiler", lambda: None)
    monkeypatch.setattr(scan_cpu, "KERNEL", fresh_loader())
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


# ---------------------------------------------------------------- bf16 in the compiled kernel


def bf16_inputs(**kw):
    """bf16 u, delta, z, B, C (as a bf16 mixer passes them) with fp32 A, D, delta_bias; and the same values in fp32."""
    x = make_inputs(**kw)
    for name in ("u", "delta", "z", "B", "C"):
        x[name] = x[name].to(torch.bfloat16)
    return x, {k: v.float() for k, v in x.items()}


def assert_bf16_rounding_of(out: torch.Tensor, ref: torch.Tensor) -> None:
    """out is ref rounded once to bf16: within half a bf16 ulp (2^-8 relative), and equal to torch's own rounding of
    ref except where the fp32 kernel and the fp32 reference land on opposite sides of a rounding boundary."""
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2.0**-8, atol=1e-5)
    assert (out == ref.to(torch.bfloat16)).float().mean().item() >= 0.99


@pytest.mark.parametrize("groups,dim", [(None, 8), (2, 70)])
def test_compiled_kernel_reads_and_writes_bf16(kernel, groups, dim):
    x, x32 = bf16_inputs(dim=dim, seqlen=150, groups=groups)
    ref, ref_last = selective_scan_ref(**x32, delta_softplus=True, return_last_state=True)
    out, last = scan_cpu.selective_scan_cpu(**x, delta_softplus=True, return_last_state=True)
    assert_bf16_rounding_of(out, ref)
    assert last.dtype == torch.float32 and rel_err(last, ref_last) <= 1e-5  # the state never went through bf16
    # A mix of fp32 and bf16 inputs is read as given, without rounding the fp32 ones.
    mixed = {**x, "delta": x32["delta"], "C": x32["C"]}
    assert_bf16_rounding_of(scan_cpu.selective_scan_cpu(**mixed, delta_softplus=True), ref)
    # fp32 u means an fp32 output, from the same bf16 delta / z / B.
    out32 = scan_cpu.selective_scan_cpu(**{**x, "u": x32["u"]}, delta_softplus=True)
    assert out32.dtype == torch.float32 and rel_err(out32, ref) <= 1e-5


def test_bf16_mixer_layout_reaches_the_kernel_without_copies(monkeypatch, kernel):
    # As in Mamba._direction: delta, z, B and C are transposed bf16 Linear outputs (channel stride 1).
    x, x32 = bf16_inputs(dim=40, seqlen=70)
    strided = {**x, **{k: x[k].transpose(1, 2).contiguous().transpose(1, 2) for k in ("delta", "z", "B", "C")}}
    assert strided["delta"].stride(1) == 1 and strided["delta"].dtype == torch.bfloat16
    seen = []

    def recorder(*args):
        seen.append(args)
        return kernel.scan(*args)

    monkeypatch.setattr(scan_cpu, "load_kernel", lambda: kernel._replace(scan=recorder))
    monkeypatch.setenv(BACKEND_ENV, "auto")
    with torch.no_grad():
        out = selective_scan(**strided, delta_softplus=True)
    assert len(seen) == 1  # auto dispatch picked the compiled kernel for bf16 inputs
    u_ptr, delta_ptr, _, b_ptr, c_ptr, _, z_ptr = seen[0][:7]
    assert (u_ptr, delta_ptr, b_ptr, c_ptr, z_ptr) == tuple(
        strided[k].data_ptr() for k in ("u", "delta", "B", "C", "z"))
    assert list(seen[0][17]) == [1, 1, 1, 1, 1, 1]  # element types: all bf16, the output too
    assert_bf16_rounding_of(out, selective_scan_ref(**x32, delta_softplus=True))
    # A gradient is needed: the forward-only kernel is not used.
    u = x["u"].clone().requires_grad_()
    selective_scan(**{**strided, "u": u}, delta_softplus=True).float().sum().backward()
    assert len(seen) == 1 and u.grad is not None


def test_bf16_rounding_matches_torch_on_ties_and_specials(kernel):
    # B = C = 0 leaves only the skip term: out = D * u with u = 1 in bf16, so the kernel's output is the fp32 D
    # rounded to bf16. D holds exact rounding ties (to even: down, up, negative), a value near the bf16 maximum,
    # infinities and NaN.
    values = torch.tensor([1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8), 3.0e38, float("inf"), float("-inf"), 0.0,
                           float("nan")])
    n = values.numel()
    zero = torch.zeros(1, 1, 1, dtype=torch.bfloat16)
    out = scan_cpu.selective_scan_cpu(torch.ones(1, n, 1, dtype=torch.bfloat16),
                                      torch.zeros(1, n, 1, dtype=torch.bfloat16), -torch.ones(n, 1), zero, zero,
                                      D=values).view(-1)
    expected = values.to(torch.bfloat16)
    assert expected[0] == 1 and expected[1] == 1 + 2.0**-6  # the ties really are ties
    assert torch.equal(out[:-1].view(torch.int16), expected[:-1].view(torch.int16))
    assert out[-1].isnan()


# ---------------------------------------------------------------- where the compiled kernel may come from


@pytest.fixture
def fresh_kernel_state(monkeypatch, tmp_path):
    """Forget the loaded kernel and point its cache at tmp_path/cache; returns that cache root."""
    monkeypatch.setattr(scan_cpu, "KERNEL", fresh_loader())
    root = tmp_path / "cache"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    return root


@pytest.fixture
def dlopen_log(monkeypatch):
    """Records the sha256 of every file handed to dlopen, at the moment it is opened."""
    opened = []
    real = ctypes.CDLL

    def spy(name, *args, **kwargs):
        opened.append(hashlib.sha256(Path(name).read_bytes()).hexdigest())
        return real(name, *args, **kwargs)

    monkeypatch.setattr(ctypes, "CDLL", spy)
    return opened


def plant_library(build_dir: Path, tmp_path: Path) -> str:
    """A library whose entry point answers 77 without computing anything, at build_dir/scan_cpu.so; returns its
    sha256. A copy elsewhere proves it would visibly misbehave if it were ever loaded."""
    src = tmp_path / "planted.cpp"
    src.write_text('extern "C" int mvg_selective_scan_fwd() { return 77; }\n')
    build_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    planted = build_dir / "scan_cpu.so"
    subprocess.run([scan_cpu._compiler(), "-shared", "-fPIC", str(src), "-o", str(planted)], check=True)
    planted.chmod(0o700)
    copy = tmp_path / "planted_copy.so"
    shutil.copyfile(planted, copy)
    assert ctypes.cdll.LoadLibrary(str(copy)).mvg_selective_scan_fwd() == 77  # not through the dlopen_log spy
    return hashlib.sha256(planted.read_bytes()).hexdigest()


def assert_torch_path_used(monkeypatch):
    calls = []
    monkeypatch.setattr(scan_cpu, "selective_scan_cpu", lambda *a, **k: calls.append(1))
    monkeypatch.setenv(BACKEND_ENV, "auto")
    x = make_inputs()
    with torch.no_grad():
        out = selective_scan(**x, delta_softplus=True)
    assert calls == []
    assert rel_err(out, selective_scan_ref(**x, delta_softplus=True)) <= 1e-5


def test_build_is_private_and_recorded(kernel, fresh_kernel_state, dlopen_log):
    root = fresh_kernel_state
    assert scan_cpu.load_kernel() is not None, scan_cpu.build_error()
    (build_dir,) = root.glob("mobilevideogpt_scan_cpu_*")
    library = build_dir / "scan_cpu.so"
    for path in (root, build_dir):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700 and path.stat().st_uid == os.geteuid()
    assert not stat.S_IMODE(library.stat().st_mode) & 0o022
    recorded = (build_dir / "scan_cpu.so.sha256").read_text().strip()
    assert recorded == hashlib.sha256(library.read_bytes()).hexdigest() == dlopen_log[0]
    assert len(dlopen_log) == 1


@pytest.mark.parametrize("record", ["wrong", "missing"])
def test_planted_library_is_rebuilt_never_loaded(kernel, fresh_kernel_state, dlopen_log, tmp_path, record):
    name = scan_cpu.build_recipe()[3]
    build_dir = fresh_kernel_state / name
    planted = plant_library(build_dir, tmp_path)
    if record == "wrong":
        (build_dir / "scan_cpu.so.sha256").write_text("0" * 64 + "\n")
    fresh_kernel_state.chmod(0o700)
    assert scan_cpu.load_kernel() is not None, scan_cpu.build_error()
    assert planted not in dlopen_log and len(dlopen_log) == 1
    assert dlopen_log[0] == (build_dir / "scan_cpu.so.sha256").read_text().strip()
    x = make_inputs()
    assert rel_err(scan_cpu.selective_scan_cpu(**x, delta_softplus=True),
                   selective_scan_ref(**x, delta_softplus=True)) <= 1e-5


def test_library_that_stays_wrong_is_refused(monkeypatch, kernel, fresh_kernel_state, dlopen_log, tmp_path):
    # The rebuild cannot replace the planted file (simulated): the loader refuses instead of loading it.
    build_dir = fresh_kernel_state / scan_cpu.build_recipe()[3]
    planted = plant_library(build_dir, tmp_path)
    fresh_kernel_state.chmod(0o700)
    monkeypatch.setattr(scan_cpu, "_compile", lambda *args: None)
    assert scan_cpu.load_kernel() is None
    assert "refusing to load" in scan_cpu.build_error() and "scan_cpu.so.sha256 does not exist" in scan_cpu.build_error()
    assert planted not in dlopen_log and dlopen_log == []
    assert_torch_path_used(monkeypatch)


@pytest.mark.parametrize("where", ["root", "build_dir"])
def test_world_writable_cache_is_refused(monkeypatch, kernel, fresh_kernel_state, dlopen_log, tmp_path, where):
    root = fresh_kernel_state
    build_dir = root / scan_cpu.build_recipe()[3]
    planted = plant_library(build_dir, tmp_path)
    (build_dir / "scan_cpu.so.sha256").write_text(planted + "\n")  # a consistent record does not help
    root.chmod(0o700)
    (root if where == "root" else build_dir).chmod(0o777)
    assert scan_cpu.load_kernel() is None
    assert "writable by group or others (mode 777)" in scan_cpu.build_error()
    assert dlopen_log == []
    assert_torch_path_used(monkeypatch)


def test_cache_owned_by_another_user_is_refused(monkeypatch, kernel, fresh_kernel_state, dlopen_log):
    root = fresh_kernel_state
    root.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(root, 65534, 65534)
        other = 65534
    else:  # cannot chown: become "another user" for the owner check instead
        other = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: other + 1)
    assert scan_cpu.load_kernel() is None
    assert f"is owned by uid {other}, not by this user" in scan_cpu.build_error()
    assert dlopen_log == [] and not list(root.iterdir())
    assert_torch_path_used(monkeypatch)


def test_unwritable_cache_falls_back_to_torch_not_tmp(monkeypatch, kernel, fresh_kernel_state, dlopen_log, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(blocker / "cache"))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    assert scan_cpu.load_kernel() is None
    assert "cannot create the Mamba mixer kernels cache" in scan_cpu.build_error()
    assert list(temp.iterdir()) == [] and dlopen_log == []
    assert_torch_path_used(monkeypatch)


def stat_result(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


def test_folder_and_library_rules():
    me, path = os.geteuid(), Path("/x")
    folder = scan_cpu.folder_problem
    assert folder(path, stat_result(stat.S_IFDIR | 0o700, me), strict=True) is None
    assert folder(path, stat_result(stat.S_IFDIR | 0o755, me), strict=True) is None  # readable is fine
    assert "writable" in folder(path, stat_result(stat.S_IFDIR | 0o770, me), strict=True)
    assert "writable" in folder(path, stat_result(stat.S_IFDIR | 0o1777, me), strict=True)
    assert "owned by uid" in folder(path, stat_result(stat.S_IFDIR | 0o700, me + 1), strict=True)
    assert "not a directory" in folder(path, stat_result(stat.S_IFLNK | 0o777, me), strict=True)
    # Above the cache root: root-owned system folders and sticky shared ones (/tmp) are fine, open ones are not.
    assert folder(path, stat_result(stat.S_IFDIR | 0o755, 0), strict=False) is None
    assert folder(path, stat_result(stat.S_IFDIR | 0o1777, 0), strict=False) is None
    assert "writable" in folder(path, stat_result(stat.S_IFDIR | 0o777, 0), strict=False)
    if me != 0:
        assert "owned by uid" in folder(path, stat_result(stat.S_IFDIR | 0o755, me + 1), strict=False)
    assert "owned by uid 65534" in folder(path, stat_result(stat.S_IFDIR | 0o755, 65534), strict=False)
    library = scan_cpu.library_problem
    assert library(path, stat_result(stat.S_IFREG | 0o700, me)) is None
    assert "writable" in library(path, stat_result(stat.S_IFREG | 0o666, me))
    assert "owned by uid" in library(path, stat_result(stat.S_IFREG | 0o700, 65534))
    assert "not a regular file" in library(path, stat_result(stat.S_IFLNK | 0o700, me))


def test_missing_source_falls_back_to_torch(monkeypatch, fresh_kernel_state, tmp_path):
    monkeypatch.setattr(scan_cpu, "SOURCE", tmp_path / "gone.cpp")
    assert scan_cpu.load_kernel() is None
    assert "missing from the installed package" in scan_cpu.build_error()
    assert_torch_path_used(monkeypatch)


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


def layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """x (batch, D, L) as the same values at three strides: contiguous, channel contiguous (a transposed Linear
    output), and every other element of a wider tensor."""
    return {
        "contiguous": x.contiguous(),
        "channel-major": x.transpose(1, 2).contiguous().transpose(1, 2),
        "spaced": torch.stack([x, x], dim=-1)[..., 0],
    }


@pytest.mark.parametrize("width", [1, 2, 4, 7])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("reverse", [False, True])
def test_compiled_conv_matches_reference_at_any_layout_and_direction(kernel, width, activation, reverse):
    # 150 steps span three of the kernel's work items; dim 33 is not a multiple of a vector; 3 steps are fewer
    # than the widest taps.
    flip = (lambda t: t.flip(-1)) if reverse else (lambda t: t)
    for seqlen in (150, 3):
        x, w, b = conv_inputs(dim=33, seqlen=seqlen, width=width)
        ref = flip(causal_conv1d_ref(flip(x), w, b, activation=activation))
        for name, view in layouts(x).items():
            out = scan_cpu.causal_conv1d_cpu(view, w, b, silu=activation is not None, reverse=reverse)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6, msg=name)
            # The output keeps a channel-contiguous input's layout, so the next Linear reads it without a copy.
            assert (out.stride(1) == 1) == (name == "channel-major"), name
    torch.testing.assert_close(scan_cpu.causal_conv1d_cpu(x, w, None, reverse=reverse),
                               flip(causal_conv1d_ref(flip(x), w)), rtol=1e-5, atol=1e-6)


def test_reverse_conv_is_anti_causal_on_every_route(monkeypatch, kernel):
    x, w, b = conv_inputs(dtype=torch.float32)
    changed = x.clone()
    changed[..., 12] += 5.0
    for backend in ("auto", "torch"):
        monkeypatch.setenv(BACKEND_ENV, backend)
        with torch.no_grad():
            base = causal_conv1d(x, w, b, activation="silu", reverse=True)
            out = causal_conv1d(changed, w, b, activation="silu", reverse=True)
        torch.testing.assert_close(out[..., 13:], base[..., 13:], rtol=0, atol=0)  # width 4: t = 9..12 see x[12]
        assert not torch.allclose(out[..., 9:13], base[..., 9:13])
        torch.testing.assert_close(out[..., :9], base[..., :9], rtol=0, atol=0)


def test_compiled_conv_reads_and_writes_bf16(kernel):
    x, w, b = conv_inputs(dim=40, seqlen=70)
    for view in layouts(x.bfloat16()).values():
        out = scan_cpu.causal_conv1d_cpu(view, w, b, silu=True)
        assert out.dtype == torch.bfloat16
        assert_bf16_rounding_of(out, causal_conv1d_ref(x.bfloat16().float(), w, b, activation="silu"))


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_reverse_scan_is_the_flipped_scan(monkeypatch, kernel, backend):
    monkeypatch.setenv(BACKEND_ENV, backend)
    x = make_inputs(dim=40, seqlen=150, groups=2)
    flipped = {k: (v.flip(-1) if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
    ref, ref_last = selective_scan_ref(**flipped, delta_softplus=True, return_last_state=True)
    mixer_layout = {**x, **{k: x[k].transpose(-1, -2).contiguous().transpose(-1, -2) for k in ("u", "delta", "z")}}
    for inputs in (x, mixer_layout):
        with torch.no_grad():
            out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, reverse=True)
        assert rel_err(out, ref.flip(-1)) <= 1e-5
        assert rel_err(last, ref_last) <= 1e-5
    # The kernel's output follows u's layout: time-major for a channel-contiguous u.
    if backend == "auto":
        assert selective_scan(**mixer_layout, delta_softplus=True).stride(1) == 1


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


def test_scan_route_names_the_path_selective_scan_takes(monkeypatch):
    x = make_inputs(dim=16, seqlen=32, dstate=8)
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert scan.scan_route(**x) == "torch"
    monkeypatch.setenv(BACKEND_ENV, "auto")
    with torch.no_grad():
        assert scan.scan_route(**x) == ("cpp" if scan_cpu.load_kernel() is not None else "torch")
    assert scan.scan_route(**{k: v.requires_grad_() for k, v in x.items()}) == "torch"  # the compiled kernel has no backward
    conv_x, w, _ = conv_inputs(dim=16, seqlen=32)
    with torch.no_grad():
        assert scan.conv_route(conv_x, w) == ("cpp" if scan_cpu.load_kernel() is not None else "torch")
    assert scan.conv_route(conv_x, w.requires_grad_()) == "torch"
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert scan.conv_route(conv_x, w) == "torch"
