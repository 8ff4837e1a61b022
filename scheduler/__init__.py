"""scheduler: kube-scheduler's default profile over an informer-fed snapshot.

- framework: PodInfo/NodeInfo, filter plugins (upstream order and wording), score plugins, schedule_one
- cache: nodes with bound and assumed pods
- queue: active / backoff / unschedulable scheduling queue
- scheduler: Scheduler (informers, loop, binder pool, FailedScheduling events, leader election)
- main: add_args(parser) / run(args) for `kubeling scheduler`

Talks to the apiserver only through kube.client.
"""
