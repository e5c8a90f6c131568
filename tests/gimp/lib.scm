; lib.scm: Script-Fu helpers for tests/test_gimp.sh and tests/test_gimp_dialog.sh,
; for GIMP 2.10 and 3.0 alike: what their Script-Fu spells differently is in
; gimp2.scm and gimp3.scm, one of which is loaded first.
;
; Each test case is one GIMP batch command: (load this file), (case-begin DIR),
; the case's body, (case-end). Script-Fu cannot return values to the shell, and
; GIMP exits 0 whatever happens, so a case writes what it saw into DIR/out.txt
; as "key value..." lines, long texts into DIR/<name>.txt and pixels as raw
; dumps DIR/<name>.raw (file-raw-save2: the drawable's own bytes), and the shell
; reads them. Batch commands do not share variables, hence one command a case.

(define out-port #f)
(define out-dir "")

(define (case-begin dir)
  (set! out-dir dir)
  (set! out-port (open-output-file (string-append dir "/out.txt"))))

(define (case-end)
  (out "done")
  (close-output-port out-port))

; (out key item...): one line "key item item ...".
(define (out key . items)
  (display key out-port)
  (for-each (lambda (x) (display " " out-port) (display x out-port)) items)
  (newline out-port))

(define (out-text name text)
  (let ((port (open-output-file (string-append out-dir "/" name ".txt"))))
    (display text port)
    (close-output-port port)))

; The raw exporter merges an image's visible layers, so a layer is dumped
; from a one-layer copy of the image (same type, precision and colormap); a
; channel (a selection mask) is dumped as it is where the exporter takes a
; drawable (2.10), else from a grey copy.
(define (raw img drawable name)
  (let ((path (string-append out-dir "/" name ".raw")))
    (if (and (channel? drawable) raw-channel-directly)
        (raw-save img drawable path)
        (let* ((copy-img (car (gimp-image-new-with-precision
                                (drawable-width drawable)
                                (drawable-height drawable)
                                (if (channel? drawable) GRAY (image-base-type img))
                                (car (gimp-image-get-precision img)))))
               (copy (car (gimp-layer-new-from-drawable drawable copy-img))))
          (if (= (image-base-type img) INDEXED)
              (copy-colormap img copy-img))
          (gimp-image-insert-layer copy-img copy 0 0)
          (gimp-layer-set-offsets copy 0 0)
          (raw-save copy-img copy path)
          (gimp-image-delete copy-img)))))

; A w x h image of TYPE (RGB or GRAY) with one opaque, non-constant
; "background" layer (fill-pattern), marked clean so that any change shows.
(define (new-image type w h)
  (let* ((img (car (gimp-image-new w h RGB)))
         (bg (layer-new img "background" w h RGB-IMAGE)))
    (gimp-image-insert-layer img bg 0 0)
    (fill-pattern img bg)
    (if (= type GRAY) (gimp-image-convert-grayscale img))
    (gimp-image-clean-all img)
    img))

(define (background img) (car (reverse (layers img))))
(define (top-layer img) (car (layers img)))

; The feathered ellipse the img2img cases repaint; its mask goes to mask.raw
; (through a saved channel, removed again).
(define (select-feathered-ellipse img)
  (select-small-ellipse img 16 12 32 36))

; A feathered ellipse W x H at X, Y (the inpaint-area cases use a small one on
; a large image); its mask and bounds written out.
(define (select-small-ellipse img x y w h)
  (gimp-image-select-ellipse img CHANNEL-OP-REPLACE x y w h)
  (gimp-selection-feather img 8)
  (let ((channel (car (gimp-selection-save img))))
    (raw img channel "mask")
    (gimp-image-remove-channel img channel))
  (let ((b (gimp-selection-bounds img)))
    (out "bounds" (cadr b) (caddr b) (cadddr b) (car (cddddr b)))))

; A procedure's remembered settings (GIMP 2.10: gimp_set_data under the
; procedure's name, core_settings_serialize's "key=value" lines), which a
; RUN-WITH-LAST-VALS call runs with: how a 2.10 script reaches settings its
; PDB arguments lack (inpaint-area, padding).
(define (set-last-values proc text)
  (gimp-procedural-db-set-data proc (string-length text)
                               (list->vector (map char->integer (string->list text)))))

; "layer TAG I W H OX OY TYPE NAME" for every layer, pixels in TAG-I.raw and
; the parameters parasite (if any) in TAG-I-parameters.txt.
(define (describe-layers img tag)
  (let loop ((ls (layers img)) (i 0))
    (if (pair? ls)
        (let* ((l (car ls))
               (p (catch #f (gimp-item-get-parasite l "diffuse-parameters")))
               (name (string-append tag "-" (number->string i))))
          (out "layer" tag i (drawable-width l) (drawable-height l)
               (car (drawable-offsets l)) (cadr (drawable-offsets l))
               (car (gimp-drawable-type l)) (car (gimp-item-get-name l)))
          (raw img l name)
          (if p (out-text (string-append name "-parameters") (caddr (car p))))
          (loop (cdr ls) (+ i 1))))))

; Everything the shell compares to tell whether a failed call changed the
; image: the dirty flag, the layer count, and every layer's pixels and name.
(define (signature img tag)
  (out "dirty" tag (car (gimp-image-is-dirty img)))
  (out "count" tag (length (layers img)))
  (describe-layers img tag))

; (try NAME (lambda () call)): "status NAME ok" or "status NAME error", and
; then "message NAME TEXT" with the Script-Fu error: a PDB error message also
; goes to GIMP's stderr, which the shell reads too, but one Script-Fu raises
; itself (GIMP 3.0: an argument outside its declared range) only shows here.
(define last-error #f)
(define (record-error . x) (set! last-error x) (apply throw x))
(set! *error-hook* record-error)
(define (try name thunk)
  (set! last-error #f)
  (let ((ok (catch #f (thunk) #t)))
    (out "status" name (if ok "ok" "error"))
    (if (and (not ok) last-error) (apply out "message" name last-error))))
