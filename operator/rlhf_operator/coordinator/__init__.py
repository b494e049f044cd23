"""The per-job coordinator: the control-plane server that workers register with
(``server``), the errors its API raises (``errors``), and the launch contract
for worker processes (``launch``: the command and environment of each rank,
shared by local mode and the Kubernetes pod builders).

The plan executor (later work) drives workers through ``server.Coordinator``.
"""
