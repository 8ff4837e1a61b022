"""The multi-node lab: network namespaces on one machine that play a control-plane VM and N workers.

    topology.py    the namespaces, the underlay switch and its veths (plan is pure; Host runs `ip`)
    state.py       .lab/state.json: everything the lab made, recorded before it is made
    supervisor.py  a small process that runs the lab's daemons and restarts crashed ones with backoff
    forward.py     127.0.0.1:PORT in the machine's namespace -> the apiserver inside the control namespace
    clusterdns.py  the kube-dns Service + Endpoints + EndpointSlice of `kubeling dns` (and default/kubernetes's
                   endpoints: the apiserver); DNS queries from a netns
    labpki.py      the lab's PKI in state/pki: cluster CA, every component's identity, etcd's own CA
    routes.py      routes from the control namespace back to every node's podCIDR (a supervised program)
    metrics.py     the few Prometheus figures `lab status` prints per component
    lab.py         `kubeling lab up|down|status|exec|logs|kill|start`
    cis.py         `scripts/cis-check`: the CIS Kubernetes Benchmark items, checked on the lab, a VM or rendered units
"""
