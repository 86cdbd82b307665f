"""Pure detection logic: plain Python, the clock passed in, no Kafka/Faust/network.

Each detector is one module with an online interface (``process(event, now)``
returns the detections that event completes), state kept inside the object
and picklable; turning a detection into a decision is a separate step
(:mod:`detectors.decision_policy`).
"""
