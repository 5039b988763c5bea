package promtext

import "testing"

// TestLabelValueQuoting: label values are escaped as the format wants.
func TestLabelValueQuoting(t *testing.T) {
	if got, want := Label("a\"b\\c\nd"), `"a\"b\\c\nd"`; got != want {
		t.Errorf("quoted %s, want %s", got, want)
	}
	if got, want := Help("a\"b\\c\nd"), `a"b\\c\nd`; got != want {
		t.Errorf("help %s, want %s", got, want)
	}
}
