"""Pure DICOM logic: parsing, DICOM JSON, rendering, transcoding. No I/O."""
