"""kube/client"""
