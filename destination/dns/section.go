package dns

import (
	"github.com/tributary-mesh/tributary/discovery"
)

// DecodeSection decodes and validates the dns: section of the config
// file; nil Settings when the file has no dns: section (the DNS interface
// is off). Errors read file:line: dns.key: problem.
func DecodeSection(s discovery.Section) (*Settings, error) {
	if !s.Written() {
		return nil, nil
	}
	var c Config
	if err := s.Decode(&c); err != nil {
		return nil, err
	}
	set, err := c.Settings()
	if err != nil {
		return nil, s.Place(err)
	}
	return set, nil
}
