"""kube/client: how every component talks to the apiserver (over HTTP only).

- config: kubeconfig loading (or in_cluster_config() inside a pod) -> ClientConfig
- rest: Client (sync, thread-safe) and AsyncClient with get/list/create/update/patch/delete/watch
- informer: Informer, a watch-fed cache with handlers and work-queue feeding
- workqueue: WorkQueue, client-go's deduplicating, rate-limited work queue
"""

from .config import ClientConfig, ConfigError, in_cluster_config, load_kubeconfig
from .errors import ApiError, ClientError, TransportError
from .informer import Informer, wait_for_cache_sync
from .rest import AsyncClient, Client, Watch, object_key, resolve, resource_path
from .workqueue import WorkQueue

__all__ = [
    "ApiError", "AsyncClient", "Client", "ClientConfig", "ClientError", "ConfigError", "Informer",
    "TransportError", "Watch", "WorkQueue", "in_cluster_config", "load_kubeconfig", "object_key", "resolve",
    "resource_path",
    "wait_for_cache_sync",
]
