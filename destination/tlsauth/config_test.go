package tlsauth

import "testing"

func TestCheckSPIFFEIDPattern(t *testing.T) {
	for _, ok := range []string{
		"spiffe://prod.example/ns/web/sa/proxy", "spiffe://prod.example/ns/*/sa/*", "spiffe://prod.example/**",
		"spiffe://prod.example/ops/**", "spiffe://a-b.c_d/x.y-z_1",
	} {
		if err := CheckSPIFFEIDPattern(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", "spiffe://", "spiffe://prod.example", "spiffe:///x", "spiffe://prod.example/", "spiffe://*/x",
		"spiffe://prod.example/**/x", "spiffe://prod.example/a*", "spiffe://prod.example/a/./b", "spiffe://prod.example/%41",
		"SPIFFE://prod.example/x", "spiffe://user@prod.example/x", "spiffe://prod.example:443/x",
	} {
		if err := CheckSPIFFEIDPattern(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
