"""The compiled low-precision linear kernel: exact arithmetic on the stored weights, threads, concurrency, fork."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from mobilevideogpt.engine import linear_cpu
from mobilevideogpt.engine.lowp import quantize_rows


def stored(n: int, k: int, fmt: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(weight as stored, scale or None, the exact fp64 matrix those represent)."""
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    if fmt == "bf16":
        weight = w.bfloat16()
        return weight, None, weight.double()
    q, scale = quantize_rows(w)
    return q, scale, q.double() * scale.double()[:, None]


@pytest.mark.parametrize("fmt", ["bf16", "int8"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("k", [37, 901])  # below one 16-block, and 56 blocks + a tail of 5
@pytest.mark.parametrize("threads", [1, 3])
def test_kernel_computes_the_stored_weights_in_fp32(linear_kernel, fmt, rows, k, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    n = 300
    weight, scale, exact = stored(n, k, fmt)
    bias = torch.randn(n)
    big = torch.randn(rows, k + 11)
    x = big[:, :k]  # rows are k + 11 apart: the kernel honours the row stride
    out = linear_cpu.linear_lowp(x, weight, scale, bias)
    expected = x.double() @ exact.T + bias.double()
    assert out.dtype == torch.float32 and out.shape == (rows, n)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5 * k**0.5)
    no_bias = linear_cpu.linear_lowp(x[:1], weight, scale)
    torch.testing.assert_close(no_bias.double(), x[:1].double() @ exact.T, rtol=1e-5, atol=1e-5 * k**0.5)


def test_leading_dimensions_are_kept(linear_kernel):
    weight, _, exact = stored(5, 16, "bf16")
    x = torch.randn(2, 1, 16)
    out = linear_cpu.linear_lowp(x, weight)
    assert out.shape == (2, 1, 5)
    torch.testing.assert_close(out.double(), x.double() @ exact.T, rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_refused(linear_kernel):
    weight, scale, _ = stored(4, 8, "int8")
    with pytest.raises(ValueError, match="1 to 8 rows"):
        linear_cpu.linear_lowp(torch.randn(9, 8), weight, scale)
    with pytest.raises(ValueError, match="per-row fp32 scale"):
        linear_cpu.linear_lowp(torch.randn(1, 8), weight)
    with pytest.raises(ValueError, match="bf16 or int8"):
        linear_cpu.linear_lowp(torch.randn(1, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="x must be fp32"):
        linear_cpu.linear_lowp(torch.randn(1, 8, dtype=torch.float64), weight, scale)


def test_concurrent_callers_get_their_own_results(linear_kernel, monkeypatch):
    # Two Python threads inside the kernel at once (ctypes releases the GIL): one uses the pool, the other
    # computes alone; neither sees the other's job.
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    weight, _, exact = stored(2000, 256, "bf16")
    inputs = [torch.randn(1, 256, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    expected = [x.double() @ exact.T for x in inputs]
    failures = []

    def work(i: int) -> None:
        for _ in range(30):
            out = linear_cpu.linear_lowp(inputs[i], weight)
            if not torch.allclose(out.double(), expected[i], rtol=1e-5, atol=1e-4):
                failures.append(i)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert failures == []


def wait_for_child(pid: int, timeout_s: float = 120) -> int:
    """The exit code of forked child `pid`; the test fails (and the child is killed) if it has not ended in time."""
    deadline = time.monotonic() + timeout_s
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    return os.waitstatus_to_exitcode(done[1])


def test_a_forked_child_computes_without_the_parents_threads(linear_kernel, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the kernel's own pool, in parent and child
    weight, _, exact = stored(3000, 64, "bf16")
    x = torch.ones(1, 64)
    expected = x.double() @ exact.T
    linear_cpu.linear_lowp(x, weight)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # the child: only the kernel (torch's OpenMP team is not usable after a fork)
        ok = False
        try:
            ok = torch.allclose(linear_cpu.linear_lowp(x, weight).double(), expected, atol=1e-4)
        finally:
            os._exit(0 if ok else 3)
    assert wait_for_child(pid) == 0
