"""The example in docs/testing.md runs as written."""

import pathlib
import re

import pytest

import flowplug

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "testing.md"


@pytest.mark.slow  # about two minutes: brute-force Jacobians through every CNF solve
@pytest.mark.skipif(
    "cnf" not in flowplug.components(), reason="the example uses the 'cnf' component"
)
def test_docs_example_runs():
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    namespace["test_my_flow"]()
