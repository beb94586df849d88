"""Reading and writing graphs, in three subpackages: ``read`` (stage 1: find the dense
chains), ``write`` (stage 5: write the new weights into the graph and export it) and
``io`` (load, save and guard files, accept models from anywhere); at this level, what a
model holds (``inventory``) and its weight ranges before and after (``weightstats``)."""
