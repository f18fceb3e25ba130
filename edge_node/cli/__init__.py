"""``fleet-edge``: run the edge node, check its config and rule files, ask and steer a running
node (status, reload, aggregates, alerts, devices), open its buffer file, hand over to the demo.

Modules, from the command line to the commands and what they share:

- ``parser``: the commands, their options and help
- ``dispatch``: ``main``: the parsed command to its function; ``demo`` becomes
  ``python -m fleetd_demo`` (the demo runs central, which edge_node never imports)
- ``run``: ``fleet-edge run``: the node under Trio, SIGHUP reloads, SIGTERM drains
- ``status``: ``status`` and ``status --watch`` (the backlog draining)
- ``reload``: ``reload``: SIGHUP to the node's pid, then what the reload applied
- ``rules``: ``check-rules``, ``aggregates``, ``alerts``
- ``devices``: ``devices registered|seen|forget``
- ``buffer_file``: ``buffer check|salvage``, ``dead-letters`` (the buffer file itself)
- ``node_client``: a command's way to the node: its config, its local HTTP API
- ``format``: UTC times, durations, rates, tables
"""

from .dispatch import main
from .parser import build_parser

__all__ = ["build_parser", "main"]
