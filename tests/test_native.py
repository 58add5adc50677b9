"""The kernels' build recipe (engine/native.py): a kernel source's local headers are part of what is compiled and
of the cache key; what is missing says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobilevideogpt.engine import attention_cpu, native, rows_cpu


def test_local_headers_are_expanded_in_place(tmp_path: Path):
    (tmp_path / "helper.h").write_bytes(b"inline int two() { return 2; }\n")
    source = b'#include <vector>\n#include "helper.h"\nint four() { return two() * 2; }\n'
    expanded = native.expand_local_includes(source, tmp_path)
    assert expanded == b"#include <vector>\ninline int two() { return 2; }\nint four() { return two() * 2; }\n"


def test_a_header_change_is_a_new_build(tmp_path: Path):
    (tmp_path / "k.cpp").write_bytes(b'#include "helper.h"\nint f() { return g(); }\n')
    (tmp_path / "helper.h").write_bytes(b"inline int g() { return 1; }\n")
    first = native.build_recipe(tmp_path / "k.cpp", "k", "g++")
    (tmp_path / "helper.h").write_bytes(b"inline int g() { return 2; }\n")
    second = native.build_recipe(tmp_path / "k.cpp", "k", "g++")
    assert b"return 2" in second[2] and first[3] != second[3]


def test_a_missing_header_names_it(tmp_path: Path):
    (tmp_path / "k.cpp").write_bytes(b'#include "gone.h"\n')
    with pytest.raises(RuntimeError, match=r"gone\.h is missing from the installed package"):
        native.build_recipe(tmp_path / "k.cpp", "k", "g++")


@pytest.mark.parametrize("module", [rows_cpu, attention_cpu])
def test_the_shipped_kernels_carry_the_exp_header(module):
    lines = native.build_recipe(module.SOURCE, "k", "g++")[2].splitlines()
    assert not [line for line in lines if line.startswith(b'#include "')]
    assert b"inline __m256 exp_avx2(__m256 x) {" in lines


MAPS = """\
7f0000000000-7f0000001000 r-xp 00000000 08:01 42    /opt/py/site-packages/torch/lib/libgomp.so.1
7f0000002000-7f0000003000 r--p 00000000 08:01 43    /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000004000-7f0000005000 rw-p 00000000 00:00 0
7f0000006000-7f0000007000 r--p 00000000 08:01 44    /tmp/data file.bin
"""


def test_loaded_libraries_reads_the_mapped_shared_objects():
    assert native.loaded_libraries(MAPS) == {
        "/opt/py/site-packages/torch/lib/libgomp.so.1",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    }


def test_kernels_use_openmp_only_where_torchs_runtime_is_the_one_gcc_links(monkeypatch):
    monkeypatch.setattr(native.torch.backends.openmp, "is_available", lambda: True)
    assert native.openmp_flags({"/opt/torch/lib/libgomp.so.1"}) == ["-fopenmp"]
    # A renamed copy (auditwheel) or another vendor's runtime would not be the library -fopenmp binds to.
    assert native.openmp_flags({"/opt/torch.libs/libgomp-a34b3233.so.1"}) == []
    assert native.openmp_flags({"/opt/lib/libiomp5.so"}) == []
    monkeypatch.setattr(native.torch.backends.openmp, "is_available", lambda: False)
    assert native.openmp_flags({"/opt/torch/lib/libgomp.so.1"}) == []


def test_the_scan_kernel_runs_in_torchs_openmp_runtime():
    import torch

    from mobilevideogpt.engine import scan_cpu

    def runtimes():
        return {path for path in native.loaded_libraries() if "omp" in Path(path).name}

    before = runtimes()
    if scan_cpu.load_kernel() is None:
        if scan_cpu._compiler() is None:
            pytest.skip("no C++ compiler on this machine: the compiled kernel is optional")
        pytest.fail(f"compiled CPU scan failed to build: {scan_cpu.build_error()}")
    torch.manual_seed(0)
    u, delta, z = (torch.randn(1, 96, 70) for _ in range(3))
    B, C = torch.randn(1, 1, 16, 70), torch.randn(1, 1, 16, 70)
    A = -torch.rand(96, 16)
    outputs = []
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            outputs.append(scan_cpu.selective_scan_cpu(u, delta, A, B, C, z=z, delta_softplus=True))
        finally:
            torch.set_num_threads(previous)
    assert torch.equal(outputs[0], outputs[1])  # each channel block's result is its own, whichever thread ran it
    assert runtimes() == before  # no second OpenMP runtime beside torch's
    recipe_flags = native.build_recipe(scan_cpu.SOURCE, "scan_cpu", "g++")[1]
    assert ("-fopenmp" in recipe_flags) == bool(native.openmp_flags())


def test_a_forked_child_scans_on_threads_of_its_own():
    # libgomp's pool does not survive a fork: a child must not wait on the parent's threads (it would hang).
    import os

    import torch

    from mobilevideogpt.engine import scan_cpu
    from tests.test_linear_cpu import wait_for_child

    if scan_cpu.load_kernel() is None:
        if scan_cpu._compiler() is None:
            pytest.skip("no C++ compiler on this machine: the compiled kernel is optional")
        pytest.fail(f"compiled CPU scan failed to build: {scan_cpu.build_error()}")
    torch.manual_seed(0)
    u, delta = torch.randn(1, 96, 40), torch.randn(1, 96, 40)
    B, C, A = torch.randn(1, 1, 16, 40), torch.randn(1, 1, 16, 40), -torch.rand(96, 16)
    expected = scan_cpu.selective_scan_cpu(u, delta, A, B, C)  # the parent's threads exist now
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            torch.set_num_threads(2)
            ok = torch.equal(scan_cpu.selective_scan_cpu(u, delta, A, B, C), expected)
        finally:
            os._exit(0 if ok else 3)
    assert wait_for_child(pid) == 0
