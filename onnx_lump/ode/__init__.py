"""The ODE stages: encode a chain as an ODE system (``encoding``), find its epsilon
equivalences (``equivalence``, ``grouping``; on calibration data ``data_similarity``,
``data_grouping`` and its pair scans ``data_scan``), and build the reduced
weights from a partition (``reduction``) or from the span of the activations (``span``)."""
