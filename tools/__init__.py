"""Test, measurement and lab harnesses for Garage P2P. Not part of the shipped package (not in the wheel).

The package never imports from here (tests/test_package_boundary.py). ``testkit`` holds what every
harness, test and benchmark shares (free ports, polling, the stand-in backend, percentiles).
Children started as ``python -m tools.…`` need the checkout as their working directory, as the
tests, ``make`` and the benchmarks have it.
"""
