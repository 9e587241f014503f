package admin

import (
	"embed"
	"io/fs"
	"net/http"
)

// The status page: static files embedded in the binary (no CDN, works
// offline), which read the JSON API from the browser. Everything a source
// sent is put into the page as text by app.js (textContent, never
// innerHTML), and the Content-Security-Policy allows only this server's own
// script and style files: no inline script, no other origin.

//go:embed ui/index.html ui/app.js ui/app.css
var uiFiles embed.FS

// ContentSecurityPolicy is sent with every file of the status page.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func (h *Handler) routeUI(mux *http.ServeMux) {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic("admin: embedded ui: " + err.Error())
	}
	files := http.FileServerFS(sub)
	secure := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Security-Policy", ContentSecurityPolicy)
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.Header().Set("Referrer-Policy", "no-referrer")
			w.Header().Set("Cache-Control", "no-cache")
			next.ServeHTTP(w, r)
		})
	}
	mux.Handle("GET /{$}", secure(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, sub, "index.html")
	})))
	mux.Handle("GET /ui/", secure(http.StripPrefix("/ui/", files)))
}
