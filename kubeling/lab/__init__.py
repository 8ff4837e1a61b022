"""The multi-node lab: network namespaces on one machine that play a control-plane VM and N workers.

    topology.py    the namespaces, the underlay switch and its veths (plan is pure; Host runs `ip`)
    state.py       .lab/state.json: everything the lab made, recorded before it is made
    supervisor.py  a small process that runs the lab's daemons and restarts crashed ones with backoff
    forward.py     127.0.0.1:PORT in the machine's namespace -> the apiserver inside the control namespace
    lab.py         `kubeling lab up|down|status|exec|logs|kill|start`
"""
