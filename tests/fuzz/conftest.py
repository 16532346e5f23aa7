"""Hypothesis profiles: ``ci`` (the default, a few hundred examples a test) and ``long``.

``POLLER_FUZZ_PROFILE=long pytest -m fuzz`` runs the long form by hand. No deadline: on
two loaded cores a single example can take longer than any fixed deadline, and a
deadline failure there would be noise, not a finding.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SHARED = {
    "deadline": None,
    "print_blob": True,  # a failure prints how to reproduce it with @reproduce_failure
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=300, **_SHARED)
settings.register_profile("long", max_examples=20_000, **_SHARED)
settings.load_profile(os.environ.get("POLLER_FUZZ_PROFILE", "ci"))
