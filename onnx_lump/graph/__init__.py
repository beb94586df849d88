"""Reading and writing graphs: find the dense chains (``chains``), rewrite them
(``rewrite``), load, save and guard files (``modelio``, ``saving``, ``paths``), accept
models from anywhere (``modelsource``), park rewritten tensors on disk (``spill``), and
count what a model holds (``inventory``, ``weightstats``)."""
