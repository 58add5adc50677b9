"""The OpenMP wait policy the package sets before torch loads (mobilevideogpt/openmp_wait.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from mobilevideogpt import openmp_wait


def test_a_short_spin_only_where_nothing_else_runs():
    spin = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(openmp_wait.SPIN_COUNT)}
    assert openmp_wait.wait_settings({}, others_running=0, cpus=2) == spin
    assert openmp_wait.wait_settings({}, others_running=1, cpus=2) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp_wait.wait_settings({}, others_running=None, cpus=8) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp_wait.wait_settings({}, others_running=0, cpus=1) == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_the_users_setting_is_kept():
    for environ in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "5"}, {"OMP_WAIT_POLICY": "PASSIVE"}):
        assert openmp_wait.wait_settings(environ, others_running=0, cpus=2) == {}


def test_running_processes_are_read_from_loadavg():
    assert openmp_wait.other_running_processes("0.04 0.73 0.91 3/106 23645\n") == 2
    assert openmp_wait.other_running_processes("0.04 0.73 0.91 1/106 23645\n") == 0
    assert openmp_wait.other_running_processes("garbled") is None


def test_import_sets_the_policy_before_torch_and_keeps_the_users():
    show = (
        "import mobilevideogpt, os, sys; "
        "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"
    )
    env = {key: value for key, value in os.environ.items() if key not in openmp_wait.USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True).stdout
    policy, spin, torch_loaded = out.split()
    assert policy == "PASSIVE" and spin in ("None", str(openmp_wait.SPIN_COUNT)) and torch_loaded == "False"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[:2] == ["ACTIVE", "None"]
