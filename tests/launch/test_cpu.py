"""hf_losses.launch.cpu: a DeepSpeed run in one process without a launcher gets a one-process rendezvous, and
nothing is touched under a launcher (the CPU/gloo settings are tested in tests/trainers/test_arguments.py)."""

from __future__ import annotations

import os

from launching import REPO_ROOT

from hf_losses.launch.checks import check_launch_config
from hf_losses.launch.cpu import free_port, set_single_process_rendezvous

ZERO2_JSON = str(REPO_ROOT / "configs" / "deepspeed" / "zero2.json")


def test_single_process_deepspeed_gets_rendezvous_variables(clean_launch_env, trainer_args):
    check_launch_config(trainer_args(deepspeed=ZERO2_JSON))
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("0", "0", "1")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0


def test_launch_check_leaves_no_rendezvous_variables_behind_after_the_tests():
    # runs after the test above: the fixture's undo must remove what check_launch_config set (a stray RANK would
    # make Accelerate think every later test runs distributed)
    assert "RANK" not in os.environ and "WORLD_SIZE" not in os.environ


def test_rendezvous_left_alone_under_a_launcher_or_without_deepspeed(clean_launch_env, trainer_args):
    clean_launch_env.setenv("RANK", "3")
    assert set_single_process_rendezvous() == {}
    clean_launch_env.delenv("RANK")
    check_launch_config(trainer_args())  # no DeepSpeed: nothing set
    assert "WORLD_SIZE" not in os.environ


def test_free_port_is_a_port_number():
    assert 0 < free_port() < 65536
