#!/usr/bin/python3
"""Runs e2e test files with their tests in another order than unittest's
alphabetical one, to show no test depends on another having run first.

  SIGNET_BUILD_DIR=build python3 tests/e2e/shuffle.py [--order random|reversed]
      [--seed N] tests/e2e/test_X.py [...]

Within each file the test classes, and within each class the test methods,
run reversed or in a random order (the seed is printed; --seed repeats a
run). A class's tests stay together, so setUpClass still runs once."""

import argparse
import functools
import importlib.util
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def ordered(items, order, rng):
    items = list(items)
    if order == "reversed":
        return items[::-1]
    rng.shuffle(items)
    return items


def suite_of(path, order, rng):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    keys = {}

    def cmp(a, b):
        if order == "reversed":
            return (a < b) - (a > b)
        ka, kb = (keys.setdefault(n, rng.random()) for n in (a, b))
        return (ka > kb) - (ka < kb)

    loader = unittest.TestLoader()
    loader.sortTestMethodsUsing = cmp
    classes = sorted((c for c in vars(mod).values()
                      if isinstance(c, type) and issubclass(c, unittest.TestCase)
                      and c.__module__ == mod.__name__), key=lambda c: c.__name__)
    suite = unittest.TestSuite()
    for cls in ordered(classes, order, rng):
        tests = loader.loadTestsFromTestCase(cls)
        print("%s.%s: %s" % (name, cls.__name__, ", ".join(t._testMethodName for t in tests)),
              file=sys.stderr)
        suite.addTests(tests)
    return suite


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--order", choices=("random", "reversed"), default="random")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    print("shuffle: order %s, seed %d" % (a.order, seed), file=sys.stderr)
    ok = True
    for path in a.files:
        rng = random.Random(seed)
        result = unittest.TextTestRunner(verbosity=2).run(suite_of(os.path.abspath(path), a.order, rng))
        ok = ok and result.wasSuccessful()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
