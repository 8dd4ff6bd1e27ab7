"""The /classify batcher: merges concurrent requests, keeps each request's order, never hangs."""
import asyncio
import threading
import time

import pytest

from serving.batcher import AdaptiveBatcher


class SlowScorer:
    """Stands in for Runtime.classify: 20 ms a batch, records each batch it is given."""

    def __init__(self, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.concurrent = self.max_concurrent = 0
        self.lock = threading.Lock()
        self.fail_on = fail_on

    def __call__(self, texts, roles):
        with self.lock:
            self.batches.append(list(texts))
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            time.sleep(0.02)
            if self.fail_on in texts:
                raise RuntimeError("scoring failed")
            return [f"{t}|{r}" for t, r in zip(texts, roles)]
        finally:
            with self.lock:
                self.concurrent -= 1


def test_an_idle_batcher_scores_a_lone_request_at_once():
    scorer = SlowScorer()
    sizes = []

    async def main():
        return await AdaptiveBatcher(scorer, max_batch_size=8, on_batch=sizes.append).submit(["a"], ["architect"])

    assert asyncio.run(main()) == ["a|architect"]
    assert scorer.batches == [["a"]] and sizes == [1]


def test_concurrent_requests_are_merged_and_each_gets_its_own_results_in_order():
    scorer = SlowScorer()

    async def main():
        batcher = AdaptiveBatcher(scorer, max_batch_size=8, in_flight=2)
        requests = [[f"r{i}-t{j}" for j in range(1 + i % 3)] for i in range(20)]
        results = await asyncio.gather(*(batcher.submit(texts, [None] * len(texts)) for texts in requests))
        return requests, results

    requests, results = asyncio.run(main())
    for texts, got in zip(requests, results):
        assert got == [f"{t}|None" for t in texts]
    assert sorted(t for b in scorer.batches for t in b) == sorted(t for r in requests for t in r)
    assert max(len(b) for b in scorer.batches) > 3, "requests that waited together were not merged"
    assert max(len(b) for b in scorer.batches) <= 8
    assert scorer.max_concurrent == 2  # a second batch runs while the first is scored, never a third


def test_a_failed_batch_fails_its_requests_and_the_batcher_keeps_serving():
    scorer = SlowScorer(fail_on="bad")

    async def main():
        batcher = AdaptiveBatcher(scorer, max_batch_size=4, in_flight=1)
        first = asyncio.ensure_future(batcher.submit(["ok0"], [None]))
        await asyncio.sleep(0)  # `ok0` is now being scored alone; the next two wait and merge
        bad, good = batcher.submit(["bad"], [None]), batcher.submit(["ok1"], [None])
        outcome = await asyncio.gather(first, bad, good, return_exceptions=True)
        after = await batcher.submit(["ok2"], [None])
        return outcome, after

    (first, bad, good), after = asyncio.run(main())
    assert first == ["ok0|None"]
    assert isinstance(bad, RuntimeError) and isinstance(good, RuntimeError)  # they shared a batch
    assert after == ["ok2|None"]


@pytest.mark.parametrize("size", [1, 5])
def test_a_request_larger_than_the_batch_limit_is_split_and_reassembled(size):
    scorer = SlowScorer()
    texts = [f"t{i}" for i in range(11)]

    async def main():
        return await AdaptiveBatcher(scorer, max_batch_size=size).submit(texts, [None] * len(texts))

    assert asyncio.run(main()) == [f"{t}|None" for t in texts]
    assert all(len(b) <= size for b in scorer.batches)
