"""The ODE stages: encode a chain as an ODE system (``encoding``), find its epsilon
equivalences (``equivalence``, ``grouping``, ``data_grouping``), and build the reduced
weights from a partition (``reduction``) or from the span of the activations (``span``)."""
