"""Server metrics in the Prometheus text format (version 0.0.4), written by hand: request counts by
route and status, token counters, the engine's queue and running gauges, and histograms of
request latency and time to first token.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Histogram:
    """Cumulative buckets (upper bounds), their sum and count."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts or [0] * len(self.buckets)):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {self.total}", f"{name}_count{braces} {self.n}"]
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters and histograms of one server; render() adds the engine's gauges at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def request_done(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def tokens(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def render(self, engine_stats=None, in_flight: int = 0) -> str:
        """The exposition text; engine_stats: the engine's EngineStats (running, queued, ...) or None."""
        with self._lock:
            lines = ["# HELP tunesmith_requests_total HTTP requests answered, by route and status.",
                     "# TYPE tunesmith_requests_total counter"]
            lines += [f'tunesmith_requests_total{{route="{_escape(r)}",status="{s}"}} {c}'
                      for (r, s), c in sorted(self.requests.items())]
            lines += ["# HELP tunesmith_prompt_tokens_total Prompt tokens of finished generation requests.",
                      "# TYPE tunesmith_prompt_tokens_total counter",
                      f"tunesmith_prompt_tokens_total {self.prompt_tokens}",
                      "# HELP tunesmith_completion_tokens_total Tokens generated for clients.",
                      "# TYPE tunesmith_completion_tokens_total counter",
                      f"tunesmith_completion_tokens_total {self.completion_tokens}",
                      "# HELP tunesmith_requests_in_flight Requests admitted and not yet answered.",
                      "# TYPE tunesmith_requests_in_flight gauge", f"tunesmith_requests_in_flight {in_flight}"]
            if engine_stats is not None:
                lines += ["# HELP tunesmith_queue_depth Sequences waiting for a slot in the engine.",
                          "# TYPE tunesmith_queue_depth gauge", f"tunesmith_queue_depth {engine_stats.queued}",
                          "# HELP tunesmith_running Sequences the engine is generating.",
                          "# TYPE tunesmith_running gauge", f"tunesmith_running {engine_stats.running}",
                          "# HELP tunesmith_engine_steps_total Decode steps of the engine.",
                          "# TYPE tunesmith_engine_steps_total counter",
                          f"tunesmith_engine_steps_total {engine_stats.steps}"]
            lines += ["# HELP tunesmith_request_duration_seconds Time from request to the last byte, by route.",
                      "# TYPE tunesmith_request_duration_seconds histogram"]
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines("tunesmith_request_duration_seconds", f'route="{_escape(route)}"')
            lines += ["# HELP tunesmith_time_to_first_token_seconds Time from request to the first generated token.",
                      "# TYPE tunesmith_time_to_first_token_seconds histogram"]
            lines += self.ttft.lines("tunesmith_time_to_first_token_seconds")
        return "\n".join(lines) + "\n"
