"""A multiprocessing script moved to Ray by its import line, then the extensions in use.

Run: python examples/01_pool_dropin.py   (Ray starts lazily on a local machine; pass
address= to Pool, or set RAY_ADDRESS, for a cluster)
"""

from __future__ import annotations

import math
import time

from raypool import Pool  # was: from multiprocessing import Pool

WORDS: dict[str, int] = {}


def load_vocabulary(size: int) -> None:
    """Runs once in each worker process before its first item (like opening a DB)."""
    WORDS.update({f"w{i}": i for i in range(size)})


def score(word: str) -> int:
    return WORDS.get(word, -1)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def flaky(x: int) -> float:
    if x == 7:
        raise ValueError("bad input 7")
    if x == 9:
        time.sleep(3600)  # a runaway item
    return x / 2


def main() -> None:
    # --- the unchanged multiprocessing code -------------------------------------------------
    with Pool(initializer=load_vocabulary, initargs=(1000,)) as pool:
        print("map:", pool.map(score, ["w1", "w42", "nope"]))
        print("starmap:", pool.starmap(pow, [(2, 10), (3, 3)]))
        primes = sum(pool.imap_unordered(is_prime, range(200_000)))
        print("primes below 200000:", primes)
        result = pool.apply_async(sum, ([1, 2, 3],), callback=lambda v: print("callback:", v))
        print("apply_async:", result.get(timeout=60))
        print("lambda:", pool.map(lambda s: s.upper(), ["ray", "pool"]))

    # --- what multiprocessing cannot do --------------------------------------------------
    with Pool() as pool:
        # per-item timeout, exceptions as values, (item, result) pairs, in one call
        for item, outcome in pool.imap(
            flaky, range(12), timeout=2, safe_exceptions=True, ret_args=True
        ):
            print(f"  {item:2d} -> {outcome!r}")

        # options() gives submit/apply the same keywords (their **kwargs go to your function)
        print("options:", pool.options(timeout=5).apply(flaky, (4,)))

        # checkpoint=True: rerun this script and the finished items are not computed again
        squares = pool.map(is_prime, range(10_000), checkpoint=True)
        print("checkpointed:", sum(squares), "primes below 10000")


if __name__ == "__main__":
    main()
