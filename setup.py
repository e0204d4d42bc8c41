"""Metadata lives in setup.cfg; this file only declares the optional compiled module (dsim.native)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("dsim._zmqio", ["dsim/_zmqio.c"], optional=True)])
