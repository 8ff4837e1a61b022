"""apiserver/store"""
