"""The verl plugin entry point: a registration that fails to import is visible, with its cause.

verl's ``import verl`` loads every ``verl.plugins`` entry point and logs a failing one at debug
level only. Each case runs ``import verl`` in a fresh interpreter, as a trainer or Ray worker does.
"""

import subprocess
import sys

CHECK = """
import sys
{setup}
import verl
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
try:
    get_reward_manager_cls("confprofile")
    print("REGISTERED")
except Exception as exc:
    print("UNKNOWN", type(exc).__name__)
"""


def import_verl(setup: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK.format(setup=setup)], capture_output=True, text=True, timeout=300)


def test_a_working_install_registers_quietly():
    done = import_verl()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("REGISTERED")
    assert "could not be registered" not in done.stderr


def test_a_broken_install_warns_with_the_cause():
    # A module of the reward adapters that cannot be imported (as with a missing dependency).
    done = import_verl("sys.modules['verl_confprofile.reward.vote_board'] = None")
    assert done.returncode == 0, done.stderr  # verl itself still imports
    assert "UNKNOWN" in done.stdout
    assert "WARNING" in done.stderr
    assert "confprofile reward managers could not be registered" in done.stderr
    assert "verl_confprofile.reward.vote_board" in done.stderr  # the cause, named
