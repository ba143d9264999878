package openapi

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// TestSchemaCarriesItsNotice: the vendored file keeps its provenance and
// license text, and the LICENSE beside it is that same text.
func TestSchemaCarriesItsNotice(t *testing.T) {
	doc, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	var src struct {
		Repository  string `json:"repository"`
		Commit      string `json:"commit"`
		LicenseText string `json:"license_text"`
	}
	raw, ok := doc.Extensions["x-source"]
	if !ok {
		t.Fatal("x-source missing: the schema no longer says where it came from")
	}
	b, _ := json.Marshal(raw)
	if err := json.Unmarshal(b, &src); err != nil {
		t.Fatal(err)
	}
	if src.Repository == "" || len(src.Commit) != 40 {
		t.Errorf("x-source names repository %q at commit %q", src.Repository, src.Commit)
	}
	lic, err := os.ReadFile("LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(src.LicenseText, "BSD 3-Clause") || string(lic) != src.LicenseText {
		t.Error("LICENSE differs from the schema's x-source.license_text")
	}
	if _, ok := doc.Extensions["x-patches"]; !ok {
		t.Error("x-patches missing: the changes from upstream are no longer listed")
	}
	if doc.Paths.Find("/accounts/{account_id}/storage/kv/namespaces/{namespace_id}/values/{key_name}") == nil {
		t.Error("the write endpoint is missing")
	}
}
