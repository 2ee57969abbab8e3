"""Raw dataset folders (MARS, iLIDS-VID, PRID2011, the synthetic benchmark) -> reidkit manifests."""
