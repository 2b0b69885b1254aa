"""Benchmarks: dicomlake (and Orthanc where both apply) measured as separate processes over HTTP."""
