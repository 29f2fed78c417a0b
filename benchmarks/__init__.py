"""Speed benchmarks for vpeft, measured side by side with plain timm and timm + Hugging Face peft.

Not part of the test suite's pass/fail: run ``python -m benchmarks.run`` (see docs/benchmarks.md).
"""
