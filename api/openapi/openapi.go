// Package openapi holds Cloudflare's OpenAPI schema of the Workers KV
// endpoints, vendored so that a lone clone of kvsync can check, in its
// tests, every request the client sends and every answer the emulator
// gives. kvsync itself never reads it: only test binaries import this
// package. Where the file comes from and how it was brought up to date is
// in README.md beside it; its license is LICENSE beside it.
package openapi

import (
	_ "embed"
	"fmt"

	"github.com/getkin/kin-openapi/openapi3"
)

//go:embed workers-kv.openapi.json
var schema []byte

// Load parses and validates the schema. Each call returns a document of its
// own, so a caller may change it (its servers, say) without affecting
// another test.
func Load() (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(schema)
	if err != nil {
		return nil, fmt.Errorf("loading the vendored Workers KV OpenAPI schema: %w", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, fmt.Errorf("the vendored Workers KV OpenAPI schema is invalid: %w", err)
	}
	return doc, nil
}
