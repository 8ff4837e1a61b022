"""kubeling dns: the cluster DNS server (kube-dns/CoreDNS schema) fed by informers."""
