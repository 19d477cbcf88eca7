"""The chaos suite of issue 11: faults injected into lab hosts under steady open-loop traffic.

`make chaos` runs the all-in-one experiments (chaos/experiments/aio) against `make up`'s host;
each experiment is a Chaos Toolkit experiment whose actions and probes are in chaos.actions.
chaos.run drives them, chaos.lab holds the SSH and traffic code, chaos.report writes
docs/chaos.md and the timelines in docs/img/chaos/.
"""
