"""Triton kernels, each beside its pure-torch reference (``<op>_ref``).

Keep this file free of the names that the Hub package also called ``kernels`` exports:
transformers probes ``import kernels`` and would mistake ours for it (tests/kernels/test_kernels_pkg.py).
"""
