"""How big each figure is: a full run (about 15 minutes on a quiet 2-core machine) and a
``--quick`` smoke pass (under 2 minutes, for CI: proves the harness runs, not the numbers)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Sizes:
    """Every size and repetition count the figures use."""

    quick: bool
    runs: int
    """Repetitions of each throughput/latency measurement; the table shows the median."""
    payload_bytes: int = 100
    """Encoded JSON size of every item (a unique ``seq`` plus padding)."""

    # 1. add
    add_items: int = 10_000
    add_keys: int = 1_000
    add_producers: int = 4
    celery_add_items: int = 5_000

    # 2. add_many
    add_many_calls: int = 100
    add_many_batch: int = 1_000
    add_many_keys: int = 100

    # 3. end-to-end
    e2e_items: int = 100_000
    e2e_celery_items: int = 5_000
    e2e_workers: tuple[int, ...] = (1, 2)
    e2e_single_items: int = 20_000
    """Items (= keys = batches) of the 1-item-batch case: a worker's batches per second."""
    jobs_items: int = 20_000
    """No-op jobs of figure 11: a worker's jobs per second."""
    batch_size: int = 100
    max_wait: float = 1.0

    # 4. lateness
    late_keys: int = 10_000
    late_spread: float = 5.0
    late_scan_interval: float = 1.0

    # 5. finding due work
    due_sizes: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    due_next_samples: int = 300
    due_claim_samples: int = 100
    due_scan_samples: int = 3
    due_load_budget: float = 240.0
    """Seconds one subject may spend loading open keys; the figure says when it stopped short."""

    # 6. memory
    mem_items: int = 100_000
    mem_items_per_key: int = 10
    mem_celery_items: int = 20_000

    # 7. loss
    loss_items: int = 10_000
    loss_keys: int = 20
    loss_max_items: int = 10
    loss_max_wait: float = 0.05

    # 8. add from threads
    add_threads: tuple[int, ...] = (1, 16, 64)
    add_thread_items: int = 10_000

    # 10. add_async from coroutines
    add_coroutines: tuple[int, ...] = (1, 1_000)
    add_async_items: int = 50_000
    """Items of the 1,000-coroutine case; one coroutine adds a fifth as many."""

    # ceilings
    redis_benchmark_requests: int = 50_000

    # bounds
    step_timeout: float = 180.0
    """No wait for workers or producers lasts longer than this."""


FULL = Sizes(quick=False, runs=3)

QUICK = Sizes(
    quick=True,
    runs=1,
    add_items=2_000,
    add_keys=200,
    celery_add_items=1_000,
    add_many_calls=10,
    e2e_items=10_000,
    e2e_celery_items=2_000,
    e2e_single_items=2_000,
    jobs_items=2_000,
    late_keys=2_000,
    late_spread=1.5,
    due_sizes=(1_000, 10_000),
    due_next_samples=50,
    due_claim_samples=20,
    due_scan_samples=1,
    due_load_budget=30.0,
    mem_items=10_000,
    mem_celery_items=2_000,
    loss_items=3_000,
    add_thread_items=2_000,
    add_async_items=10_000,
    redis_benchmark_requests=20_000,
    step_timeout=60.0,
)


def sizes_for(quick: bool, runs: int | None = None) -> Sizes:
    """The preset for a full or quick run, optionally with another repetition count."""
    sizes = QUICK if quick else FULL
    return sizes if runs is None else replace(sizes, runs=max(1, runs))
