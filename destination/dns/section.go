package dns

import (
	"errors"

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
	if err == nil {
		return set, nil
	}
	var errs []error
	for _, e := range flatten(err) {
		var ce *discovery.ConfigError
		if errors.As(e, &ce) && ce.Key != "" {
			line := discovery.KeyLine(s.Node, ce.Key)
			if line == 0 {
				line = s.Line()
			}
			errs = append(errs, &discovery.ConfigError{File: s.File, Line: line, Key: s.Path + "." + ce.Key, Err: ce.Err})
			continue
		}
		errs = append(errs, s.Errorf("%v", e))
	}
	return nil, errors.Join(errs...)
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}
