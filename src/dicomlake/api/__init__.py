"""HTTP routes only: the resource API (/v1/...), DICOMweb (.../dicomWeb/...) and the error shape."""
