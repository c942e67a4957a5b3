"""The kit as a pytest plugin, seen from outside: test suites run by pytester.

Each inner suite is a fresh directory with no conftest; the plugin comes from the
installed ``pytest11`` entry point, as it does for a user. They run in a subprocess
(`runpytest_subprocess`): the leftover check looks at the test process's children, and
the outer run's own processes must not be in view.
"""

from __future__ import annotations

import os
import re

import psutil
import pytest

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.timeout(180)

HEADER = '''
import subprocess
import sys

import mybus_actors as mb


class Echo(mb.Actor):
    def receive(self, message):
        self.reply(message)
'''


def run(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=HEADER + body)
    # The inner test files are imported by the actors' processes too (by reference).
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=150)


def test_a_clean_suite_passes(pytester: pytest.Pytester) -> None:
    result = run(pytester, '''
def test_spawn_and_stop(mybus_node, probe):
    ref = mb.spawn(Echo, "echo")  # the node's environment: no arguments needed
    probe.tell("echo", "hi")
    probe.expect("hi", timeout=10)
    assert ref.stop(timeout=5)


def test_what_the_node_started_it_stops(mybus_node):
    mybus_node.spawn(Echo, "echo")
    with mybus_node.connect() as me:
        assert me.ask("echo", 1, timeout=10) == 1


def test_a_child_that_was_waited_for_is_fine(mybus_node):
    assert subprocess.run([sys.executable, "-c", "pass"], timeout=30).returncode == 0
''')
    result.assert_outcomes(passed=3)


def test_a_leaked_child_process_fails_the_test_and_is_killed(pytester: pytest.Pytester) -> None:
    pid_file = pytester.path / "leaked.pid"
    dir_file = pytester.path / "runtime.dir"
    result = run(pytester, f'''
def test_leaks_a_process(mybus_node):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open({str(pid_file)!r}, "w").write(str(proc.pid))
    open({str(dir_file)!r}, "w").write(str(mybus_node.runtime_dir))


def test_leaks_an_actor(mybus_node):
    mb.spawn(Echo, "forgotten")  # never stopped


def test_after_them_a_clean_one_passes(mybus_node):
    pass
''')
    result.assert_outcomes(passed=3, errors=2)  # the checks fail each leaker at teardown
    out = result.stdout.str()
    leaked = int(pid_file.read_text())
    assert re.search(r"ERROR at teardown of test_leaks_a_process\b", out), out
    assert re.search(rf"child processes left behind: \['pid {leaked} \(", out), out
    assert re.search(r"ERROR at teardown of test_leaks_an_actor\b", out), out
    assert "mybus_actors._boot" in out, out  # the actor's process, named
    assert "files left in the runtime directory" in out  # the actor's entry and rings
    # ... and cleaned up all the same: the leaked process is gone, not just reported.
    assert not psutil.pid_exists(leaked) or psutil.Process(leaked).status() == "zombie"
    assert not os.path.exists(dir_file.read_text()), "the runtime directory was not removed"


def test_a_file_left_in_the_runtime_directory_fails_the_test(pytester: pytest.Pytester) -> None:
    result = run(pytester, '''
def test_leaks_a_file(mybus_node):
    (mybus_node.runtime_dir / "stray.txt").write_text("left behind")


def test_a_directory_is_not_a_leak(mybus_node):
    (mybus_node.runtime_dir / "made-a-dir").mkdir()
''')
    result.assert_outcomes(passed=2, errors=1)
    out = result.stdout.str()
    assert re.search(r"ERROR at teardown of test_leaks_a_file\b", out), out
    assert re.search(r"files left in the runtime directory \S+: \['stray.txt'\]", out), out


def test_a_suite_that_does_not_use_the_kit_is_untouched(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain='''
import os
import subprocess
import sys

def test_plain():
    assert "MYBUS_NODE" not in os.environ or os.environ["MYBUS_NODE"] == "outer"
    # No leak check for a test that does not ask for one.
    subprocess.Popen([sys.executable, "-c", "pass"]).wait()
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=60)
    result.assert_outcomes(passed=1)
