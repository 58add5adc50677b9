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
