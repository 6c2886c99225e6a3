"""ambit side by side with direct TCP, stunnel and haproxy: ``python -m bench.compare``.

One run brings up a local ambit cluster (two nodes, meshed and plain pods),
starts the servers (nginx, iperf3) and the baselines (an stunnel pair with
mutual TLS 1.3, haproxy as an HTTP proxy), and runs every workload on every
scenario in the same run, repetitions interleaved, so that every ratio is to a
baseline measured minutes apart on the same machine. Results go to
``bench/results/<YYYY-MM-DD-HHMM>/`` (``results.md``, ``results.json``, PNGs).

Modules: ``system`` (processes, ``/proc``, installing tools), ``topology``
(the cluster and its servers), ``peers`` (stunnel and haproxy), ``workloads``
(the load generators and their parsers), ``stats`` (pure numbers and target
verdicts), ``report`` and ``plots`` (output), ``profile`` (py-spy), ``hold``
(idle connections held open inside a pod), ``run`` (the schedule), ``l7`` and
``l7_report`` (the L7 section: a waypoint against ambit's L4 path and haproxy;
``grpcload/``, its grpc-go load tool).
"""
