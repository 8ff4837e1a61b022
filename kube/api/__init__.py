"""kube/api"""
