import requests

from conftest import Store, dicom_file


def test_store_then_search_finds_the_study(store: Store) -> None:
    data = dicom_file("CT_small.dcm").read_bytes()
    response = requests.post(
        f"{store.dicomweb}/studies",
        data=data,
        headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
    )
    assert response.status_code == 200, response.text
    found = requests.get(f"{store.dicomweb}/studies", params={"PatientID": "1CT1"}).json()
    assert [s["0020000D"]["Value"][0] for s in found] == ["1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"]
