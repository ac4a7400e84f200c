"""Hand-written kernels, each beside the plain reference it must equal (tests/test_ops_*.py) and with the measured
reason it exists; models/, losses/ and evaluation/ call them."""
