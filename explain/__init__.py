"""``ambit why``: what the mesh does with one connection or request, hop by hop, decided by
the evaluators the proxies run (ztunnel's outbound plan and inbound policy, the waypoint's
gate and route table) over one snapshot, and said in words.

Imports ``mesh``, ``ztunnel`` and ``waypoint``; nothing imports it but the CLI.
"""
