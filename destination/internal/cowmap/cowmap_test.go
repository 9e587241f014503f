package cowmap

import (
	"fmt"
	"testing"
)

func TestEditLeavesTheOriginal(t *testing.T) {
	var m Map[string, int]
	e := m.Edit()
	for i := range 1000 {
		e.Set(fmt.Sprint(i), i)
	}
	a := e.Done()
	e = a.Edit()
	e.Set("1", -1)
	e.Del("2")
	e.Set("new", 7)
	b := e.Done()
	if v, _ := a.Get("1"); v != 1 {
		t.Fatalf("the original changed: %d", v)
	}
	if _, ok := a.Get("new"); ok || a.Len() != 1000 {
		t.Fatal("the original changed")
	}
	if v, _ := b.Get("1"); v != -1 {
		t.Fatal(v)
	}
	if _, ok := b.Get("2"); ok || b.Len() != 1000 {
		t.Fatalf("edited: len %d", b.Len())
	}
	if _, ok := (Map[string, int]{}).Get("x"); ok {
		t.Fatal("zero map")
	}
}
